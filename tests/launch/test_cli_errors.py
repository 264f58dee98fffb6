"""The real command line under a real mpiexec.

A good run prints one summary line (rank 0 only) and leaves a completed
record. Bad input gives one line naming the problem in all the output (rank 0's,
naming the rank where only one rank found it), exit 2 on every rank, fast; a
failure during training one traceback, the failing rank's, and its reason in
the record.

Each case is a separate job of 2 ranks (3 where a smaller job cannot show it) (the only way to observe exit status and hangs), so they are few:
one per way of failing (the parser, an option, the data, a file, the rank
count, the topology, the schedule, the device). Every option's own message is
checked in one process (tests/unit/test_config_record.py).
"""
import os
import subprocess
import sys
import time

import pytest
import torch

from helpers import mpiexec

NP = 3
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the repository


def launch(args, np=NP, timeout=90, script=None, quiet=True):
    cmd = mpiexec() + ["-n", str(np), sys.executable]
    cmd += ["-c", script] if script else ["-m", "mpisgd", "train", *(["--quiet"] if quiet else []), *args]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return proc, time.monotonic() - t0


CASES = [
    (["--algo", "nope"], "unknown algorithm 'nope'", 2),
    (["--tua", "3"], "unrecognized arguments: --tua 3", 2),
    (["--algo", "local", "--tau", "0"], "--tau must be a positive integer, got 0", 2),
    (["--data", "hdf5:/no/such/file.h5"], "no such file: /no/such/file.h5", 2),
    (["--data", "mnist:/"], "--data mnist:/: needs one file of training images named", 2),
    (["--data", "synthetic:1"], "2 workers but only 1 training samples", 2),
    (["--out", "/"], "--out / is a directory", 2),
    (["--algo", "async-easgd", "--steps", "5"], "--center dedicated needs at least 2 ranks", 1),
    (["--algo", "async", "--servers", "2"], "with servers 2 needs at least 3 ranks", 2),
    (["--algo", "k-sync", "--k", "3"], "--k must be at most the number of workers (1)", 2),
    (["--algo", "local", "--straggler", "slow:2=2"], "names worker 2, but there are 2 workers", 2),
    (["--algo", "local", "--group-size", "3"],
     "--group-size must divide the 2 ranks of the job into equal groups, got 3", 2),
    (["--algo", "gossip", "--topology", "/no/such/W.npy"], "/no/such/W.npy: no such file", 2),
    (["--algo", "cooperative", "--topology", "one-peer-exponential"], "needs a symmetric W", 3),
    (["--algo", "local", "--schedule", "adacomm"], "--adacomm-interval must be given", 2),
    (["--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N, got 'tpu'", 2),
    pytest.param(["--device", "cuda"], "--device cuda: no GPU is visible on host", 2,
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")),
]


@pytest.mark.parametrize("args, needle, np", CASES)
def test_bad_input_one_line(args, needle, np, two_rank_cases):
    if np == 2:          # answered by one job that ran every 2-rank case in turn
        codes, output, elapsed = two_rank_cases[tuple(args)]
        assert codes == [2, 2], codes
        lines = [ln for ln in output.splitlines() if "mpisgd: error:" in ln]
        assert len(lines) == 1 and needle in lines[0], output
        assert "Traceback" not in output
        assert elapsed < 60
        return
    proc, elapsed = launch(args, np)
    assert proc.returncode == 2
    assert_one_error_line(proc, needle)
    assert elapsed < 60


#: Each rank runs every 2-rank case through ``cli.main`` in turn, in one job (a launch
#: costs both ranks a torch import: one job instead of 13), its output per case in a file
#: of its own; the cases fail before any communication, so one cannot disturb the next.
CASES_SCRIPT = """
import json, os, sys, tempfile, time
from mpi4py import MPI
from mpisgd.app import cli
cases, out = json.loads(sys.argv[1]), sys.argv[2]
world = MPI.COMM_WORLD
results = []
saved = os.dup(1), os.dup(2)
for args in cases:
    world.Barrier()
    with tempfile.TemporaryFile("w+") as f:      # this case's output, at the descriptors
        sys.stdout.flush(); sys.stderr.flush()
        os.dup2(f.fileno(), 1); os.dup2(f.fileno(), 2)
        t0 = time.monotonic()
        try:
            code = cli.main(["train", "--quiet", *args])
        except SystemExit as err:
            code = err.code
        elapsed = time.monotonic() - t0
        sys.stdout.flush(); sys.stderr.flush()
        os.dup2(saved[0], 1); os.dup2(saved[1], 2)
        f.seek(0)
        results.append((code, f.read(), elapsed))
gathered = world.gather(results, root=0)
if world.rank == 0:
    with open(out, "w") as f:
        json.dump(gathered, f)
"""


@pytest.fixture(scope="module")
def two_rank_cases(tmp_path_factory):
    """args -> (every rank's exit code, all ranks' output, seconds) of each 2-rank case."""
    import json
    cases = [list(p.values[0] if hasattr(p, "values") else p[0]) for p in CASES
             if (p.values[2] if hasattr(p, "values") else p[2]) == 2]
    out = tmp_path_factory.mktemp("cases") / "results.json"
    cmd = mpiexec() + ["-n", "2", sys.executable, "-c", CASES_SCRIPT, json.dumps(cases), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ranks = json.loads(out.read_text())
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return {tuple(args): ([r[i][0] for r in ranks], "".join(r[i][1] for r in ranks),
                          max(r[i][2] for r in ranks))
            for i, args in enumerate(cases)}


def assert_one_error_line(proc, needle):
    """Exactly one ``mpisgd: error:`` line in all the job's output, and no traceback."""
    output = proc.stdout + proc.stderr
    lines = [ln for ln in output.splitlines() if "mpisgd: error:" in ln]
    assert len(lines) == 1 and needle in lines[0], output
    assert "Traceback" not in output
    return lines[0]


def test_error_on_one_rank_is_one_line_naming_it(tmp_path):
    """Only rank 2 sees a bad environment: rank 0 prints its error once, as rank 2's."""
    script = (
        "import os, sys\n"
        "from mpi4py import MPI\n"
        "if MPI.COMM_WORLD.rank == 2:\n"
        "    os.environ['MPISGD_WAIT'] = 'nap'\n"
        "from mpisgd.app import cli\n"
        f"sys.exit(cli.main(['train', '--steps', '5', '--out', {str(tmp_path / 'r.h5')!r}]))\n"
    )
    proc, _ = launch([], script=script)
    assert proc.returncode == 2
    line = assert_one_error_line(proc, "MPISGD_WAIT must be auto, spin or yield, got 'nap'")
    assert line.startswith("mpisgd: error: rank 2: "), line


def test_existing_or_locked_record_is_refused(tmp_path):
    """An earlier run's record needs --overwrite; a record another job holds is refused
    with its pid, even with --overwrite: every rank exits 2, one line, before training."""
    out = tmp_path / "run.h5"
    out.write_bytes(b"an earlier run's record")
    proc, _ = launch(["--steps", "5", "--out", str(out)])
    assert proc.returncode == 2
    assert_one_error_line(proc, f"--out {out} exists; give --overwrite to replace it")
    code = (f"from mpisgd.app import sidecars; sidecars.lock({str(out)!r}); "
            "print('held', flush=True); input()")
    other = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert other.stdout.readline().strip() == "held"
        proc, _ = launch(["--steps", "5", "--out", str(out), "--overwrite"])
    finally:
        other.communicate("\n", timeout=30)
    assert proc.returncode == 2
    assert_one_error_line(proc, f"--out {out} is being written by another job (pid {other.pid} on ")
    assert out.read_bytes() == b"an earlier run's record"


def failing_train(out, ranks, message):
    """The real driver, 200 steps of sync, whose optimizer step fails at step 5 on ``ranks``
    (a Python expression), raising ``FloatingPointError(message)``; (process, seconds)."""
    script = (
        "import sys\n"
        "from mpi4py import MPI\n"
        "from mpisgd.app import cli\n"
        "from mpisgd.algorithms.sync import SyncSGD\n"
        "step = SyncSGD.step\n"
        "def failing(self, loss=None):\n"
        f"    if MPI.COMM_WORLD.rank in {ranks} and self.steps == 5:\n"
        f"        raise FloatingPointError({message!r})\n"
        "    step(self)\n"
        "SyncSGD.step = failing\n"
        f"sys.exit(cli.main(['train', '--steps', '200', '--quiet', '--out', {str(out)!r}]))\n"
    )
    return launch([], script=script, timeout=60)


def test_exception_in_training_on_one_rank_ends_the_job(tmp_path):
    out = tmp_path / "run.h5"
    proc, elapsed = failing_train(out, "(2,)", "rank 2 diverged")
    assert proc.returncode != 0
    assert "[rank 2] FloatingPointError: rank 2 diverged" in proc.stderr
    assert proc.stderr.count("Traceback") == 1, proc.stderr
    assert elapsed < 45
    from mpisgd.app.record import read
    status = read(str(out))["attrs"]["status"]
    assert status == "failed: rank 2: FloatingPointError: rank 2 diverged"     # rank 2's own note


def test_the_same_exception_on_every_rank_is_one_traceback(tmp_path):
    out = tmp_path / "run.h5"
    proc, elapsed = failing_train(out, "range(3)", "every rank diverged")
    assert proc.returncode != 0
    assert proc.stderr.count("Traceback") == 1, proc.stderr
    assert proc.stderr.count("FloatingPointError: every rank diverged") == 1, proc.stderr
    assert elapsed < 45
    from mpisgd.app.record import read
    assert read(str(out))["attrs"]["status"].endswith("FloatingPointError: every rank diverged")


def test_api_exception_after_build_ends_the_job():
    """A Python API script, no CLI: build() installed the abort hook, so rank 1's error
    ends the ranks waiting for it in the first round."""
    script = (
        "import torch, mpisgd\n"
        "from mpi4py import MPI\n"
        "comm = MPI.COMM_WORLD\n"
        "model = torch.nn.Linear(4, 2)\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "algo = mpisgd.build('local', model, opt, comm=comm, tau=2)\n"
        "if comm.rank == 1:\n"
        "    raise RuntimeError('rank 1 fails after build')\n"
        "for step in range(100):\n"
        "    opt.zero_grad()\n"
        "    model(torch.randn(8, 4)).sum().backward()\n"
        "    algo.step()\n"
    )
    proc, elapsed = launch([], script=script, timeout=60)
    assert proc.returncode != 0
    assert "[rank 1] RuntimeError: rank 1 fails after build" in proc.stderr
    assert proc.stderr.count("Traceback") == 1, proc.stderr
    assert elapsed < 30


def test_exception_on_one_rank_ends_the_job():
    script = (
        "from mpi4py import MPI\n"
        "from mpisgd.errors import abort_on_exception\n"
        "comm = MPI.COMM_WORLD\n"
        "abort_on_exception(comm)\n"
        "if comm.rank == 2:\n"
        "    raise RuntimeError('only rank 2 fails')\n"
        "comm.Barrier()\n"          # the others wait here forever without the abort
    )
    proc, elapsed = launch([], script=script, timeout=60)
    assert proc.returncode != 0
    assert "[rank 2] RuntimeError: only rank 2 fails" in proc.stderr
    assert elapsed < 30


def test_train_command_end_to_end(tmp_path):
    out = tmp_path / "run.h5"
    args = ["--algo", "local", "--tau", "4", "--steps", "40", "--out", str(out)]
    proc, _ = launch(args, quiet=False)
    assert proc.returncode == 0, proc.stderr
    summary = [ln for ln in proc.stdout.splitlines() if ln.startswith("mpisgd: local, 3 workers")]
    assert len(summary) == 1 and summary[0].endswith(f"record: {out}")
    assert f"device: {'cuda' if torch.cuda.is_available() else 'cpu'}" in summary[0]
    from mpisgd.app.record import read
    rec = read(str(out))
    assert rec["attrs"]["status"] == "completed" and rec["metrics"]["rounds"][-1] == 10


def test_srun_without_a_pmi_stops_every_task_with_the_fix(tmp_path):
    """What srun does without a PMI the MPI understands: N plain processes, each told it
    is one of N tasks, each an MPI world of 1. Every task exits 2 with the fix, before
    training, and none writes the record they would all share."""
    out = str(tmp_path / "a.h5")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "SLURM_"))}
    procs = [subprocess.Popen([sys.executable, "-m", "mpisgd", "train", "--quiet", "--out", out],
                              env={**env, "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": str(i)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=ROOT) for i in range(2)]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 2, stderr
        lines = [line for line in (stdout + stderr).splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("mpisgd: error: srun started 2 tasks")
        assert "--mpi=pmi2" in lines[0] and "Traceback" not in stderr
    assert not os.path.exists(out)


def test_ctrl_c_stops_every_rank_with_one_line_and_a_checkpoint(tmp_path):
    """mpiexec forwards SIGINT to every rank: the run stops as for SIGTERM (the same step
    on every rank, a checkpoint, exit 3), one line, no traceback."""
    import signal

    import h5py
    out = tmp_path / "run.h5"
    job = subprocess.Popen(mpiexec() + ["-n", "2", sys.executable, "-m", "mpisgd", "train",
                                        "--quiet", "--steps", "1000000", "--log-every", "5",
                                        "--threads", "1", "--out", str(out)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and job.poll() is None:
        try:
            with h5py.File(out, "r") as f:
                if len(f["metrics/step"]) >= 2:
                    break
        except (OSError, KeyError):
            pass
        time.sleep(0.05)
    job.send_signal(signal.SIGINT)
    stdout, stderr = job.communicate(timeout=120)
    output = stdout + stderr
    assert job.returncode == 3, output
    lines = [ln for ln in output.splitlines() if ln.startswith("mpisgd:")]
    assert len(lines) == 1 and lines[0].startswith("mpisgd: interrupted: SIGINT at step "), output
    assert "Traceback" not in output
    with h5py.File(out, "r") as f:
        assert f.attrs["status"] == lines[0][len("mpisgd: "):]
    checkpoint = lines[0].split("checkpoint ")[1]
    assert os.path.isfile(os.path.join(checkpoint, "meta.json"))
