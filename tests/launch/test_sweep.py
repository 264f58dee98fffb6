"""``mpisgd sweep --scheduler local`` and ``mpisgd study``, for real, with this MPI's mpiexec.

One grid, 2 configurations of different rank counts: the sweep runs each in its
own mpiexec, the study all in one; their records are the same runs (equal final
models), so a study on a sub-communicator is the run a separate launch makes.
A task killed mid-run (no checkpoint) reruns from the start over its record.
"""
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from helpers import mpiexec

GRID = "algo: local\nsteps: 16\nbatch_size: 16\ntau: 4\ngrid:\n  ranks: [2, 3]\n"


def run(cwd, *args, timeout=240, np_=None):
    cmd = (mpiexec() + ["-n", str(np_)] if np_ else []) + [sys.executable, "-m", "mpisgd", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def final(path):
    with h5py.File(path, "r") as f:
        return f.attrs["status"], int(f.attrs["world_size"]), f["final/params"][()]


def test_a_study_in_one_launch_equals_a_sweep_of_separate_launches(tmp_path):
    (tmp_path / "grid.yaml").write_text(GRID)
    swept = run(tmp_path, "sweep", "grid.yaml", "--out", "a", "--scheduler", "local")
    assert swept.returncode == 0, swept.stdout + swept.stderr
    assert "2 tasks in a: 2 pending" in swept.stdout
    studied = run(tmp_path, "study", "grid.yaml", "--out", "b", np_=3)
    assert studied.returncode == 0, studied.stdout + studied.stderr
    assert "[1/2] ranks-2 (2 ranks): completed" in studied.stdout
    assert "[2/2] ranks-3 (3 ranks): completed" in studied.stdout
    for name, world in (("ranks-2", 2), ("ranks-3", 3)):
        sa, wa, xa = final(tmp_path / "a" / "runs" / f"{name}.h5")
        sb, wb, xb = final(tmp_path / "b" / "runs" / f"{name}.h5")
        assert (sa, wa) == (sb, wb) == ("completed", world)
        np.testing.assert_array_equal(xa, xb)
    again = run(tmp_path, "study", "grid.yaml", "--out", "b", np_=3)
    assert again.returncode == 0 and "2 tasks on 3 ranks in b: 2 completed" in again.stdout
    assert "[1/2]" not in again.stdout
    resweep = run(tmp_path, "sweep", "grid.yaml", "--out", "a", "--scheduler", "local")
    assert resweep.returncode == 0 and "2 tasks in a: 2 completed" in resweep.stdout


def test_a_study_needing_more_ranks_than_the_launch_stops_every_rank(tmp_path):
    (tmp_path / "grid.yaml").write_text(GRID)
    done = run(tmp_path, "study", "grid.yaml", "--out", "b", np_=2, timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("task ranks-3 needs 3 ranks; this launch has 2 (mpiexec -n 3)") == 1
    assert not os.path.exists(tmp_path / "b" / "runs" / "ranks-2.h5")


def test_a_task_killed_without_a_checkpoint_reruns_over_its_record(tmp_path):
    (tmp_path / "grid.yaml").write_text("algo: local\nsteps: 3000\nbatch_size: 8\nlog_every: 100\n"
                                        "ranks: 2\n")
    proc = subprocess.Popen([sys.executable, "-m", "mpisgd", "sweep", "grid.yaml", "--out", "s",
                             "--scheduler", "local"], cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record = tmp_path / "s" / "runs" / "run.h5"
    deadline = time.monotonic() + 120
    while not (record.exists() and _logged(record)):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    with h5py.File(record, "r") as f:
        assert f.attrs["status"].startswith("failed: the job ended")
    again = run(tmp_path, "sweep", "grid.yaml", "--out", "s", "--scheduler", "local")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 tasks in s: 1 failed" in again.stdout and "--overwrite" in again.stdout
    with h5py.File(record, "r") as f:
        steps = f["metrics/step"][()]
        assert f.attrs["status"] == "completed"
    assert list(steps) == list(range(100, 3001, 100))


def _logged(record):
    try:
        with h5py.File(record, "r") as f:
            return len(f["metrics/step"]) >= 2
    except (OSError, KeyError):
        return False


def relative_fit(sizes, seconds):
    """argmin over alpha, beta >= 0 of sum((alpha + n beta - t) / t)^2: the 2 x 2 normal
    equations with weights 1/t^2, else the better of the two one-parameter boundaries."""
    n, t = np.asarray(sizes, float), np.asarray(seconds, float)
    w = 1 / t ** 2
    s0, s1, s2 = w.sum(), (w * n).sum(), (w * n * n).sum()
    t0, t1 = (w * t).sum(), (w * n * t).sum()
    det = s0 * s2 - s1 * s1
    alpha, beta = (t0 * s2 - t1 * s1) / det, (s0 * t1 - s1 * t0) / det
    if alpha >= 0 and beta >= 0:
        return alpha, beta
    cost = lambda a, b: (((a + n * b) - t) ** 2 * w).sum()       # noqa: E731
    return min([(0.0, t1 / s2), (t0 / s0, 0.0)], key=lambda ab: cost(*ab))


def test_calibrate_fits_this_machine_and_project_reads_the_file(tmp_path):
    done = run(tmp_path, "calibrate", "--out", "net.json", "--sizes", "8,4096,262144", np_=2,
               timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "point-to-point: alpha" in done.stdout and "network: net.json" in done.stdout
    import json
    body = json.load(open(tmp_path / "net.json"))
    assert body["allreduce"]["ranks"] == 2
    assert [n for n, _ in body["p2p_points"]] == [8, 4096, 262144]
    # the file's alpha and beta are the fit of its own points: the minimiser of
    # sum((alpha + n beta - t) / t)^2 over alpha, beta >= 0, solved here in closed form
    alpha, beta = relative_fit(*zip(*body["p2p_points"]))
    assert (body["alpha"], body["beta"]) == pytest.approx((alpha, beta), rel=1e-9, abs=1e-15)
    a, b = relative_fit(*zip(*body["allreduce"]["points"]))      # ring model at p = 2:
    assert (body["allreduce"]["alpha"], body["allreduce"]["beta"]) == \
        pytest.approx((a / 2, b), rel=1e-9, abs=1e-15)          # a / (2(p-1)), b p / (2(p-1))
    alone = run(tmp_path, "calibrate", np_=1, timeout=60)
    assert alone.returncode == 2 and "calibrate needs at least 2 ranks" in alone.stderr
