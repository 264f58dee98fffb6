"""A bad MPISGD_* variable on one rank only, under a real mpiexec: every rank ends with
status 2, no hang, and one line in all the output names the variable (and the rank).

The environment differs per rank the way a user's job gets it: one MPMD section per
rank (``mpiexec -n 1 -env NAME VALUE ... : -n 1 ...``), so the variable is set before
Python starts (an import that raised would hang the other ranks).
"""
import subprocess
import sys
import time

import pytest

from helpers import mpiexec
from test_cli_errors import assert_one_error_line

NP = 2      # one rank with the variable, one without: enough to show it reaches every rank


def launch_per_rank(envs: list[dict], args: list[str], timeout: float = 90):
    """``mpisgd train --quiet ARGS`` on ``len(envs)`` ranks, rank r with ``envs[r]`` added."""
    cmd = mpiexec()
    openmpi = "--oversubscribe" in cmd       # Open MPI: -x NAME=VALUE; MPICH (hydra): -env
    for rank, env in enumerate(envs):
        cmd += [":"] if rank else []
        cmd += ["-n", "1"]
        for name, value in env.items():
            cmd += ["-x", f"{name}={value}"] if openmpi else ["-env", name, value]
        cmd += [sys.executable, "-m", "mpisgd", "train", "--quiet", *args]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - t0


@pytest.mark.parametrize("bad_rank, env, needle", [
    (1, {"MPISGD_OPS": "bogus"}, "MPISGD_OPS must be auto or torch, got 'bogus'"),
    (0, {"MPISGD_WIAT": "spin"}, "MPISGD_WIAT is not an mpisgd environment variable "
                                 "(did you mean MPISGD_WAIT? known: MPISGD_WAIT, "),
    (NP - 1, {"MPISGD_STAGING": "sometimes"}, "MPISGD_STAGING must be auto, always or never"),
])
def test_a_bad_variable_on_one_rank_ends_every_rank(tmp_path, bad_rank, env, needle):
    envs = [env if rank == bad_rank else {} for rank in range(NP)]
    proc, elapsed = launch_per_rank(envs, ["--steps", "5", "--out", str(tmp_path / "run.h5")])
    assert proc.returncode == 2
    line = assert_one_error_line(proc, needle)
    named = f"rank {bad_rank}: " if bad_rank else ""       # rank 0 prints its own as it is
    assert line.startswith(f"mpisgd: error: {named}MPISGD_"), line
    assert not (tmp_path / "run.h5").exists()
    assert elapsed < 60
