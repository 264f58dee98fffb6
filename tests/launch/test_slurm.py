"""A real single-node Slurm (jobs/local-slurm.sh: munge, slurmctld, slurmd on localhost).

The sweep's job array is submitted with sbatch and its MPI tasks start with
``srun --mpi=pmi2``; a task interrupted by Slurm's warning signal requeues
itself and resumes from its checkpoint; jobs/slurm.sbatch runs a 2-rank
world; srun without the PMI stops every task with the fix. The daemons
start once for the module (idempotently: a running Slurm is reused) and
stop at its end. Needs root (apt-get, munged, slurmd): CI runs as root; a
user's machine without root and without a Slurm skips, saying so.
"""
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from mpisgd.app import record

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HARNESS = os.path.join(ROOT, "jobs", "local-slurm.sh")


@pytest.fixture(scope="module")
def slurm():
    if os.geteuid() != 0:
        pytest.skip("starting a local Slurm needs root (apt-get, munged, slurmd)")
    started = subprocess.run(["bash", HARNESS, "start"], capture_output=True, text=True, timeout=600)
    assert started.returncode == 0, started.stdout + started.stderr
    env = {**os.environ, "SLURM_CONF": started.stdout.strip().split("=", 1)[1],
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    yield env
    subprocess.run(["bash", HARNESS, "stop"], timeout=60)


def status(path):
    """A record the running task is still writing (``read`` waits out its lock)."""
    rec = record.read(str(path))
    return rec["attrs"]["status"], int(rec["attrs"]["world_size"]), rec["metrics"]["step"]


def sweep(tmp_path, env, text, *extra, timeout=300):
    (tmp_path / "grid.yaml").write_text(text)
    return subprocess.run([sys.executable, "-m", "mpisgd", "sweep", "grid.yaml", "--out", "study",
                           *extra], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout)


def wait_for(check, timeout, what):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def finished(env, job, timeout=300):
    """Wait for ``job`` (every task of an array) to end; its final state. Polled every 0.5 s:
    ``sbatch --wait`` polls at growing intervals up to 10 s, a third of these tests' time."""
    def state():
        out = subprocess.run(["scontrol", "-o", "show", "job", job], env=env,
                             capture_output=True, text=True).stdout
        return re.findall(r"JobState=(\S+)", out)
    def ended():
        now = set(state())
        return bool(now) and not {"PENDING", "RUNNING", "COMPLETING", "CONFIGURING"} & now
    wait_for(ended, timeout, f"job {job} to end")
    return set(state())


def test_a_sweep_runs_as_a_job_array_of_mpi_tasks_and_skips_what_completed(slurm, tmp_path):
    grid = "algo: local\nsteps: 12\nbatch_size: 16\nranks: 2\ntau: 4\ngrid:\n  seed: [0, 1]\n"
    done = sweep(tmp_path, slurm, grid)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 tasks in study: 2 pending" in done.stdout and "2 tasks, submitted as" in done.stdout
    assert finished(slurm, done.stdout.split("submitted as ")[1].split()[0]) == {"COMPLETED"}
    finals = {}
    for seed in (0, 1):
        path = tmp_path / "study" / "runs" / f"seed-{seed}.h5"
        st, world, steps = status(path)
        assert (st, world, steps[-1]) == ("completed", 2, 12), (path, st, world)
        finals[seed] = record.read(str(path))["final"]["params"]
    assert not (finals[0] == finals[1]).all()          # the seeds differ
    logs = sorted(os.listdir(tmp_path / "study" / "logs"))
    assert len(logs) == 2
    assert "srun --mpi=pmi2 -n 2" in (tmp_path / "study" / "logs" / logs[0]).read_text()
    again = sweep(tmp_path, slurm, grid)
    assert again.returncode == 0 and "2 tasks in study: 2 completed" in again.stdout
    assert "submitted" not in again.stdout


def test_an_interrupted_task_requeues_and_resumes_from_its_checkpoint(slurm, tmp_path):
    # long enough that the signal (sent after 2 rows, step 400) lands mid-run, with room
    grid = "algo: local\ntau: 4\nsteps: 8000\nbatch_size: 8\nlog_every: 200\nranks: 2\n"
    started = sweep(tmp_path, slurm, grid)
    assert started.returncode == 0, started.stdout + started.stderr
    job = started.stdout.split("submitted as ")[1].split()[0]
    record = tmp_path / "study" / "runs" / "run.h5"

    def running():
        return os.path.exists(record) and len(status(record)[2]) >= 2
    wait_for(running, 120, "the task to log")
    subprocess.run(["scancel", "--signal=USR1", job], env=slurm, check=True)
    ckpt = tmp_path / "study" / "checkpoints" / "run"
    wait_for(lambda: ckpt.exists() and any(p.name.startswith("step-") for p in ckpt.iterdir()),
             60, "the checkpoint")

    def pending():
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%t"], env=slurm,
                             capture_output=True, text=True).stdout.split()
        return out == ["PD"]
    wait_for(pending, 60, "the requeue")    # it starts again by itself, cred_expire + 1 s later
    wait_for(lambda: status(record)[0] == "completed", 240, "the resumed task to complete")
    st, world, steps = status(record)
    assert steps[-1] == 8000 and list(steps) == sorted(set(steps))
    log = "".join(p.read_text() for p in (tmp_path / "study" / "logs").iterdir())
    assert "interrupted: SIGUSR1 at step" in log and "(interrupted): srun" in log
    assert "--resume" in log


def test_the_slurm_job_script_runs_one_world(slurm, tmp_path):
    os.symlink(os.path.join(ROOT, ".venv"), tmp_path / ".venv") if os.path.isdir(
        os.path.join(ROOT, ".venv")) else None
    if not (tmp_path / ".venv").exists():
        pytest.skip("jobs/slurm.sbatch activates .venv; this checkout has none")
    done = subprocess.run(["sbatch", "--parsable", "--ntasks-per-node=2", "--job-name=t",
                           os.path.join(ROOT, "jobs", "slurm.sbatch"), "--steps", "10",
                           "--algo", "local", "--tau", "2"],
                          cwd=tmp_path, env=slurm, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    job = done.stdout.strip().split(";")[0]
    states = finished(slurm, job)
    log = (tmp_path / f"t-{job}.out").read_text()
    assert states == {"COMPLETED"}, log
    st, world, steps = status(tmp_path / "runs" / f"t-{job}.h5")
    assert (st, world, steps[-1]) == ("completed", 2, 10)
    assert "local, 2 workers, 10 steps" in log


def test_srun_without_the_pmi_stops_every_task_naming_the_fix(slurm, tmp_path):
    done = subprocess.run(["srun", "--mpi=none", "-n", "2", sys.executable, "-m", "mpisgd", "train",
                           "--steps", "5", "--out", str(tmp_path / "r.h5")],
                          env=slurm, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("srun started 2 tasks (SLURM_STEP_NUM_TASKS=2)") == 2
    assert "--mpi=pmi2" in done.stderr
    assert not os.path.exists(tmp_path / "r.h5")


def test_the_harness_is_idempotent(slurm):
    again = subprocess.run(["bash", HARNESS, "start"], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and shutil.which("sbatch")
    assert subprocess.run(["bash", HARNESS, "status"], env=slurm).returncode == 0
