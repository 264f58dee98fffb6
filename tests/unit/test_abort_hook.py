"""The abort hook in one process: installed once by bind, chaining the user's hook, the
MPISGD_ABORT=0 opt-out, and an echo (a failure after another rank's) printing nothing."""
import sys

import pytest
import torch
from mpi4py import MPI

import mpisgd
from mpisgd import errors


@pytest.fixture
def hooks(monkeypatch):
    """A user's own excepthook in place (restored afterwards); the calls it got."""
    calls = []
    monkeypatch.setattr(sys, "excepthook", lambda *exc: calls.append(exc[1]))
    return calls


def build():
    model = torch.nn.Linear(3, 1)
    return mpisgd.build("local", model, torch.optim.SGD(model.parameters(), lr=0.1),
                        comm=MPI.COMM_SELF, tau=2)


def fire(exc):
    """Call the installed hook as Python would for an uncaught ``exc``; its exit status."""
    with pytest.raises(SystemExit) as info:
        sys.excepthook(type(exc), exc, None)
    return info.value.code


def test_build_installs_it_once_and_it_chains_the_users_hook(hooks, capsys):
    build()
    hook = sys.excepthook
    build()
    errors.abort_on_exception(MPI.COMM_SELF)
    assert sys.excepthook is hook and hook.comm is MPI.COMM_WORLD      # the job
    err = ValueError("bad")
    assert fire(err) == 1
    assert "[rank 0] ValueError: bad" in capsys.readouterr().err
    assert hooks == [err]                            # the user's hook still ran


def test_opt_out(hooks, monkeypatch):
    monkeypatch.setenv("MPISGD_ABORT", "0")
    user = sys.excepthook
    errors.install_abort_hook()
    assert sys.excepthook is user


def test_an_echo_prints_nothing(hooks, monkeypatch, capsys):
    monkeypatch.setattr(errors, "ECHO_WAIT", 0)
    seen = []
    errors.abort_on_exception(MPI.COMM_SELF, on_error=lambda exc: seen.append(exc) or False)
    assert fire(RuntimeError("peer died")) == 1
    assert capsys.readouterr().err == "" and len(seen) == 1
    errors.abort_on_exception(MPI.COMM_SELF, on_error=lambda exc: 1 / 0)
    assert fire(RuntimeError("first")) == 1         # a failing on_error masks nothing
    err = capsys.readouterr().err
    assert "while recording the failure: division by zero" in err and "RuntimeError: first" in err
