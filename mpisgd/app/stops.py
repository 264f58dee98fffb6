"""Why a run ends early, and how every rank learns it at the same step.

* **Preemption.** SIGTERM (a time limit, ``scancel``, preemption),
  SIGUSR1 (Slurm's ``--signal=B:USR1@120`` warning) and SIGINT (Ctrl-C,
  which ``mpiexec`` forwards to every rank) set a flag; they never
  interrupt a step. Ranks that step in lock-step vote at round boundaries
  (:class:`StopVote`: a one-number ``Iallreduce`` posted at round r, read at
  round r + 1, so no rank ever blocks on it); algorithms with a centre rank
  vote at log points, in the log point's own Allreduce. Every rank then
  stops after the same step, a checkpoint is written, and the job exits with
  :data:`EXIT_INTERRUPTED`. A second signal ends the process at once.
* **Divergence.** Each step's loss is kept (a
  :class:`~mpisgd.losses.LossWindow`: no kernel, no host sync); at a log point each rank finds its first non-finite loss among them and
  checks its parameters for non-finite values, and the flags travel in the
  log point's Allreduce: every rank stops within one log interval, with
  :data:`EXIT_DIVERGED`.
"""
from __future__ import annotations

import os
import signal

import torch

from .._mpi import MPI

EXIT_INTERRUPTED = 3
EXIT_DIVERGED = 4
SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")


class RunStopped(Exception):
    """The run ended before its last step, on every rank alike: ``str(err)`` is the record's
    status; ``exit_code`` the process's."""
    exit_code = 1

    @property
    def status(self) -> str:
        return str(self)


class Interrupted(RunStopped):
    """A signal asked the run to stop; a checkpoint was written."""
    exit_code = EXIT_INTERRUPTED


class Diverged(RunStopped):
    """A loss or parameter became non-finite (``--on-nonfinite stop``)."""
    exit_code = EXIT_DIVERGED


class Signals:
    """While active, SIGTERM, SIGUSR1 and SIGINT set :attr:`received` (the first one's name).

    A context manager: the previous handlers come back on exit, so a
    library user's own handlers are untouched outside a run. A second
    signal while one is pending restores the default action and re-raises
    it: a rank that cannot reach a step boundary still dies (a second SIGINT
    raises ``KeyboardInterrupt``, as Python does).
    """

    def __init__(self):
        self.received: str | None = None
        self._old = {}

    def _handler(self, signum, frame):
        name = signal.Signals(signum).name
        if self.received is not None:
            if signum == signal.SIGINT:      # a second Ctrl-C: Python's own, KeyboardInterrupt
                raise KeyboardInterrupt      # (a notebook keeps its kernel)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = name

    def __enter__(self) -> "Signals":
        for name in SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                try:
                    self._old[sig] = signal.signal(sig, self._handler)
                except ValueError:       # not the main thread: leave signals alone
                    pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


class StopVote:
    """Agree, without blocking, on whether any rank was signalled (lock-step algorithms).

    :meth:`at_round` is called by every rank after the same rounds: it
    completes the vote posted at the previous call (a MAX over one number,
    long since complete on a healthy run) and posts the next. Returns the
    signal's name once any rank has one, the same on every rank.
    """

    def __init__(self, comm, signals: Signals):
        self.comm, self.signals = comm, signals
        self._vote = torch.zeros(1, dtype=torch.float64)
        self._pending = None

    def at_round(self) -> str | None:
        decided = None
        if self._pending is not None:
            self._pending.wait()
            self._pending = None
            decided = signal_name(self._vote.item())
        if decided is None:
            self._vote.fill_(vote_code(self.signals))
            self._pending = self.comm.iallreduce(self._vote, op=MPI.MAX)
        return decided

    def close(self) -> None:
        if self._pending is not None:
            self._pending.wait()
            self._pending = None


def vote_code(signals: Signals) -> float:
    """This rank's signal as a number for a MAX vote (0: none)."""
    return float(SIGNALS.index(signals.received) + 1) if signals.received else 0.0


def signal_name(code: float) -> str | None:
    """The signal a vote's result names (``None`` for 0)."""
    return SIGNALS[int(code) - 1] if code > 0 else None


