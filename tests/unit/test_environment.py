"""The MPISGD_* environment: declared once, read on use, checked before the agreement."""
import os
import subprocess
import sys

import pytest

from mpisgd import mpienv
from mpisgd.errors import ConfigError


@pytest.fixture
def env(monkeypatch):
    """No MPISGD_* variable but the ones a test sets."""
    for name in [k for k in os.environ if k.startswith("MPISGD_")]:
        monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.parametrize("name", sorted(mpienv.ENVIRONMENT))
def test_every_declared_variable_checks_its_values(env, name):
    var = mpienv.ENVIRONMENT[name]
    assert mpienv.setting(name) == var.default
    if var.values is None:                              # free text, set by mpisgd itself
        env.setenv(name, " 2 nodes x 2 ranks, NIC 1 Gbit/s (emulated) ")
        assert mpienv.setting(name) == "2 nodes x 2 ranks, NIC 1 Gbit/s (emulated)"
        mpienv.check_environment()
        return
    for value in var.values:
        env.setenv(name, f" {value.upper()} ")          # stripped, any case
        assert mpienv.setting(name) == value
        mpienv.check_environment()
    env.setenv(name, "")                                # empty: as if unset
    assert mpienv.setting(name) == var.default
    env.setenv(name, "bogus")
    for check in (lambda: mpienv.setting(name), mpienv.check_environment):
        with pytest.raises(ConfigError, match=f"^{name} must be .* or .*, got 'bogus'$"):
            check()


def test_an_undeclared_name_is_refused_with_the_known_ones(env):
    env.setenv("MPISGD_WIAT", "spin")
    with pytest.raises(ConfigError) as info:
        mpienv.check_environment()
    text = str(info.value)
    assert text.startswith("MPISGD_WIAT is not an mpisgd environment variable (did you mean "
                           "MPISGD_WAIT? known: MPISGD_WAIT, MPISGD_STAGING")
    assert all(name in text for name in mpienv.ENVIRONMENT)
    env.delenv("MPISGD_WIAT")
    env.setenv("MPISGD_QUIET", "1")
    with pytest.raises(ConfigError, match=r"^MPISGD_QUIET is not .* \(known: MPISGD_WAIT"):
        mpienv.check_environment()


def test_the_readers_name_the_variable(env):
    from mpi4py import MPI
    from mpisgd.comm import Comm
    env.setenv("MPISGD_CUDA_AWARE", "maybe")
    with pytest.raises(ValueError, match="MPISGD_CUDA_AWARE must be 1 or 0, got 'maybe'"):
        Comm(MPI.COMM_SELF)
    env.setenv("MPISGD_CUDA_AWARE", "0")
    env.setenv("MPISGD_WAIT", "nap")
    with pytest.raises(ValueError, match="MPISGD_WAIT must be auto, spin or yield, got 'nap'"):
        Comm(MPI.COMM_SELF)


def test_importing_never_raises_on_a_bad_value():
    """Every module loads with bad values (they raise on use, inside the agreement)."""
    bad = {name: "bogus" for name, var in mpienv.ENVIRONMENT.items() if var.values is not None}
    code = ("import mpisgd.ops, mpisgd.comm, mpisgd.app.train, mpisgd.app.cli, mpisgd\n"
            "mpisgd.ALGORITHMS\n"
            "try:\n"
            "    mpisgd.ops.backend()\n"
            "except ValueError as err:\n"
            "    print(err)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **bad}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "MPISGD_OPS must be auto or torch, got 'bogus'"


def test_every_variable_is_in_the_user_guide():
    guide = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "user-guide.md")
    with open(guide, encoding="utf-8") as f:
        text = f.read()
    assert [name for name in mpienv.ENVIRONMENT if f"`{name}`" not in text] == []


LAUNCH_VARS = [var for var, _, _ in mpienv.LAUNCHER_SIZES]


@pytest.fixture
def no_launcher(monkeypatch):
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.mark.parametrize("var, fix", [("SLURM_STEP_NUM_TASKS", "--mpi=pmi2"),
                                      ("OMPI_COMM_WORLD_SIZE", "the mpiexec of the MPI"),
                                      ("PMI_SIZE", "the mpiexec of the MPI")])
def test_a_launcher_of_n_tasks_with_a_world_of_one_is_refused(no_launcher, var, fix):
    no_launcher.setenv(var, "4")
    with pytest.raises(ConfigError) as err:
        mpienv.check_launch(1)
    message = str(err.value)
    assert f"started 4 tasks ({var}=4) but MPI sees a world of 1" in message
    assert fix in message and ".venv/bin/mpiexec -n 4" in message
    mpienv.check_launch(4)                  # the launcher and MPI agree
    mpienv.check_launch(2)                  # mpiexec's proxies under srun: a larger world


def test_a_singleton_outside_a_launcher_or_of_one_task_passes(no_launcher):
    mpienv.check_launch(1)
    no_launcher.setenv("SLURM_STEP_NUM_TASKS", "1")
    no_launcher.setenv("SLURM_NTASKS", "8")  # the allocation's size says nothing of this step
    mpienv.check_launch(1)
