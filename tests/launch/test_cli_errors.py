"""The real command line under a real mpiexec.

A good run prints one summary line (rank 0 only) and leaves a completed
record. Bad input gives one line naming the problem on every rank, exit 2, fast.

Each case is a separate 4-rank job (the only way to observe exit status and
hangs), so they are few.
"""
import os
import subprocess
import sys
import time

import pytest
import torch

from helpers import mpiexec

NP = 4
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the repository


def launch(args, np=NP, timeout=90, script=None, quiet=True):
    cmd = mpiexec() + ["-n", str(np), sys.executable]
    cmd += ["-c", script] if script else ["-m", "mpisgd", "train", *(["--quiet"] if quiet else []), *args]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return proc, time.monotonic() - t0


@pytest.mark.parametrize("args, needle, np", [
    (["--algo", "nope"], "unknown algorithm 'nope'", NP),
    (["--algo", "local", "--tau", "0"], "--tau must be a positive integer, got 0", NP),
    (["--lr", "-0.1"], "--lr must be positive, got -0.1", NP),
    (["--data", "hdf5:/no/such/file.h5"], "no such file: /no/such/file.h5", NP),
    (["--data", "synthetic:3"], "4 workers but only 3 training samples", NP),
    (["--out", "/"], "--out / is a directory", NP),
    (["--bucket-mb", "inf"], "--bucket-mb must be a finite number, got 'inf'", NP),
    (["--algo", "easgd", "--center", "dedicated"], "--center must be one of replicated, rank0", NP),
    (["--algo", "async-easgd", "--steps", "5"], "--center dedicated needs at least 2 ranks", 1),
    (["--algo", "ps-sync", "--steps", "5"], "algorithm ps-sync needs at least 2 ranks", 1),
    (["--algo", "async", "--servers", "4"], "with servers 4 needs at least 5 ranks", NP),
    (["--algo", "k-sync", "--k", "7"], "--k must be at most the number of workers (3)", NP),
    (["--algo", "k-sync", "--staleness-lr", "1,0.1"], "--staleness-lr does not apply to algorithm 'k-sync'", NP),
    (["--algo", "async", "--staleness-lr", "1"], "--staleness-lr must be C,ETA_MAX", NP),
    (["--algo", "sync", "--straggler", "exp:-1"], "--straggler exp:MEAN needs MEAN > 0", NP),
    (["--algo", "local", "--straggler", "slow:4=2"], "names worker 4, but there are 4 workers", NP),
    (["--algo", "ps-sync", "--comm-delay", "soon"], "--comm-delay must be SECONDS >= 0", NP),
    (["--algo", "async-easgd", "--center", "rank0", "--servers", "2"],
     "--servers 2 needs center dedicated", NP),
    (["--algo", "gossip", "--topology", "/no/such/W.npy"], "/no/such/W.npy: no such file", NP),
    (["--algo", "cooperative", "--topology", "one-peer-exponential"], "needs a symmetric W", NP),
    (["--algo", "local", "--schedule", "adacomm"], "--adacomm-interval must be given", NP),
    (["--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N, got 'tpu'", NP),
    pytest.param(["--device", "cuda"], "--device cuda: no GPU is visible on host", NP,
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")),
])
def test_bad_input_one_line_on_every_rank(args, needle, np):
    proc, elapsed = launch(args, np)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("mpisgd: error:")]
    assert len(lines) == np, proc.stderr
    assert all(needle in ln for ln in lines), lines
    assert "Traceback" not in proc.stderr
    assert elapsed < 60


def test_exception_in_training_on_one_rank_ends_the_job(tmp_path):
    """The real driver, with rank 2's optimizer step failing at step 5 of 200."""
    out = tmp_path / "run.h5"
    script = (
        "import sys\n"
        "from mpi4py import MPI\n"
        "from mpisgd.app import cli\n"
        "from mpisgd.algorithms.sync import SyncSGD\n"
        "step = SyncSGD.step\n"
        "def failing(self, loss=None):\n"
        "    if MPI.COMM_WORLD.rank == 2 and self.steps == 5:\n"
        "        raise FloatingPointError('rank 2 diverged')\n"
        "    step(self)\n"
        "SyncSGD.step = failing\n"
        f"sys.exit(cli.main(['train', '--steps', '200', '--quiet', '--out', {str(out)!r}]))\n"
    )
    proc, elapsed = launch([], script=script, timeout=60)
    assert proc.returncode != 0
    assert "[rank 2] FloatingPointError: rank 2 diverged" in proc.stderr
    assert elapsed < 45
    from mpisgd.app.record import read
    assert read(str(out))["attrs"]["status"].startswith("failed: the job ended before")


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
    summary = [ln for ln in proc.stdout.splitlines() if ln.startswith("mpisgd: local, 4 workers")]
    assert len(summary) == 1 and summary[0].endswith(f"record: {out}")
    assert f"device: {'cuda' if torch.cuda.is_available() else 'cpu'}" in summary[0]
    from mpisgd.app.record import read
    rec = read(str(out))
    assert rec["attrs"]["status"] == "completed" and rec["metrics"]["rounds"][-1] == 10
