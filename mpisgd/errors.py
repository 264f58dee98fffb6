"""Errors, and how a failure on one rank ends the whole job.

MPI has no notion of a Python exception: a rank that dies while the others
sit in a collective leaves them waiting (MPICH spins at 100% CPU until the
batch system kills the job). mpisgd therefore

* validates configuration on every rank before the first message, and
  :func:`agree` s on the outcome with one ``allgather`` that every rank is
  guaranteed to reach, so a bad option ends every rank cleanly with exit
  status 2 and one line, printed by rank 0 alone (:attr:`ConfigError.echo`);
* installs :func:`abort_on_exception` in the command-line driver and in
  every ``bind`` (:func:`install_abort_hook`; ``MPISGD_ABORT=0`` opts out),
  so an exception raised later on any one rank prints that rank's
  traceback (one line for a :class:`StorageError`) and calls ``MPI_Abort``,
  which ends every rank of the job.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import traceback

#: Seconds between printing a failing rank's traceback and ``MPI_Abort``: the launcher
#: forwards output through pipes, and an abort that comes first can lose it (seen under load).
ABORT_GRACE = 0.3
#: Seconds an echo (a failure after another rank's first one) waits before aborting itself:
#: the first failure's abort normally ends the job sooner, with the first failure's message.
ECHO_WAIT = 3.0


class ConfigError(ValueError):
    """A bad option, file or rank count, detected before any communication.

    ``echo``: True on a rank whose error another rank prints: :func:`agree`
    raises the error on every rank and sets it on all but rank 0 (whose
    message names the failing rank where it is not rank 0's own), so a
    mistake at 256 ranks prints one line, not 256.
    """
    echo = False


class StorageError(OSError):
    """A file or directory the run writes could not be written (a full disk, a read-only
    or failing filesystem), mid-run: one line naming the path and the cause, never a
    traceback (:attr:`one_line`); the job ends with status 1. Raised by
    :mod:`mpisgd.storage`."""
    one_line = True


class OptionError(ConfigError):
    """A bad option: its ``name`` (Python spelling) and what is wrong with it.

    ``str(err)`` is ``"<name> <problem>"``; :meth:`flagged` spells the name as
    the CLI flag, ``"--<name> <problem>"``, without parsing the message.
    ``rank``: the rank that found it, when another rank reports it.
    """

    def __init__(self, name: str, problem: str, rank: int | None = None):
        self.name, self.problem, self.rank = name, problem, rank
        super().__init__(self._text(name))

    def _text(self, name: str) -> str:
        return (f"rank {self.rank}: " if self.rank is not None else "") + f"{name} {self.problem}"

    def flagged(self) -> str:
        return self._text("--" + self.name.replace("_", "-"))


def message(err: BaseException) -> str:
    """The one line the CLI prints for ``err``: an option spelled as its flag."""
    return err.flagged() if isinstance(err, OptionError) else str(err)


def digest(obj) -> str:
    """A short stable hash of a JSON-able object (the resolved configuration)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def agree(comm, error: str | BaseException | None = None, key: str = "") -> None:
    """Collectively check that no rank failed validation and all hold ``key``.

    Every rank must call this, with ``error`` its own failed validation (a
    message or the exception; ``None`` if it passed) and ``key`` a digest of
    what must be identical everywhere. Raises :class:`ConfigError` on every
    rank if any rank failed or the keys differ (an :class:`OptionError`
    naming the option if the first failing rank's was one); the message names
    the first bad rank (``rank R: ...``) on the ranks that did not find that
    error themselves. ``echo`` is set on every rank but rank 0: one line
    reaches the user, rank 0's, which names the rank when the error is
    rank-specific.
    """
    mine = _portable(error)
    if comm.Get_size() == 1:
        if error:
            raise _raised(mine)
        return
    results = comm.allgather((mine, key))
    raised = None
    for rank, (err, _) in enumerate(results):
        if err:
            same = rank == comm.Get_rank() or err == mine
            raised = _raised(err, None if same else rank)
            break
    keys = {k for _, k in results}
    if raised is None and len(keys) > 1:
        ranks = [r for r, (_, k) in enumerate(results) if k != results[0][1]]
        raised = ConfigError(
            f"ranks disagree on the configuration (rank 0 differs from ranks {ranks}); "
            "every rank must run the same command with the same options and files")
    if raised is not None:
        raised.echo = comm.Get_rank() != 0     # rank 0 prints it; its text names the rank
        raise raised


def _portable(error) -> tuple | None:
    """``error`` as (text, option name, problem): what every rank can rebuild."""
    if not error:
        return None
    if isinstance(error, OptionError):
        return str(error), error.name, error.problem
    return str(error), None, None


def _raised(err: tuple, rank: int | None = None) -> ConfigError:
    text, name, problem = err
    if name is not None:
        return OptionError(name, problem, rank)
    return ConfigError(text if rank is None else f"rank {rank}: {text}")


def abort_on_exception(comm, on_error=None) -> None:
    """Make an uncaught exception on any rank end every rank of the job.

    Installs a ``sys.excepthook`` on ``comm`` (the job's communicator) that

    1. calls ``on_error(exc)``, if given (first, so that it can tell an echo):
       the command line's notes the reason beside the run record
       (:func:`mpisgd.app.sidecars.note_failure`) and returns ``False`` when
       another rank's failure was noted first;
    2. prints the traceback, each line prefixed ``[rank r]`` — unless
       ``on_error`` returned ``False``: that failure is an echo of the first
       (a rank that fails after a peer died, or every rank raising the same
       error), whose traceback is the one that is printed;
    3. calls the excepthook that was installed before it, unless that is
       Python's default (which would print the traceback again);
    4. ``comm.Abort(1)`` when more than one rank runs (``MPI_Abort`` on any
       communicator ends the whole job in MPICH and Open MPI), after
       :data:`ABORT_GRACE` seconds so that the launcher forwards the
       message; an echo waits :data:`ECHO_WAIT` s for the first failure's
       abort. A lone process exits with status 1.

    Idempotent: a second call updates the installed hook (its ``on_error``
    when one is given; ``comm`` when the new one is larger) instead of
    stacking another.
    """
    hook = sys.excepthook
    if isinstance(hook, _AbortHook):
        hook.on_error = on_error or hook.on_error
        if comm.Get_size() > hook.comm.Get_size():
            hook.comm = comm
        return
    sys.excepthook = _AbortHook(comm, on_error, hook)


def install_abort_hook() -> None:
    """What ``bind`` (and so ``mpisgd.build``) calls: :func:`abort_on_exception` on
    ``MPI.COMM_WORLD``, unless the environment says ``MPISGD_ABORT=0``.

    PyTorch's and Horovod's launchers (torchrun, horovodrun) end a job when one
    of its workers dies, without the script asking; under ``mpiexec`` nothing
    does (an exiting rank waits in ``MPI_Finalize`` for the others, which wait
    in a collective for it), so the library installs the hook itself rather
    than relying on every script to remember a context manager. It is
    installed on the whole job whatever communicator the algorithm is bound
    to: a failing rank of a sub-communicator would leave the others waiting
    just the same. Opt out (``MPISGD_ABORT=0``) to handle failures yourself.
    Any value but ``0`` keeps it on (a typo never brings the hang back);
    ``mpisgd train`` always aborts.
    """
    if os.environ.get("MPISGD_ABORT", "1").strip() != "0":
        from ._mpi import MPI
        abort_on_exception(MPI.COMM_WORLD)


class _AbortHook:
    """The ``sys.excepthook`` :func:`abort_on_exception` installs."""

    running = False      # one failure at a time, through any chain of hooks

    def __init__(self, comm, on_error, previous):
        self.comm, self.on_error, self.previous = comm, on_error, previous

    def __call__(self, kind, exc, tb) -> None:
        if _AbortHook.running:       # re-entered through a hook that chains to one of these
            return
        _AbortHook.running = True
        try:
            self._end(kind, exc, tb)
        finally:
            _AbortHook.running = False

    def _end(self, kind, exc, tb) -> None:
        rank = self.comm.Get_rank()
        first = True
        if self.on_error is not None:
            try:
                first = self.on_error(exc) is not False
            except Exception as inner:  # the record must not mask the real error
                sys.stderr.write(f"[rank {rank}] while recording the failure: {inner}\n")
        if first:
            if getattr(exc, "one_line", False):       # the message says all (StorageError)
                text = f"mpisgd: error: {exc}"
            else:
                text = "".join(traceback.format_exception(kind, exc, tb))
            sys.stderr.write("".join(f"[rank {rank}] {line}\n" for line in text.splitlines()))
            sys.stderr.flush()
        if self.previous is not sys.__excepthook__:
            try:
                self.previous(kind, exc, tb)
            except Exception as inner:
                sys.stderr.write(f"[rank {rank}] in the previous excepthook: {inner}\n")
        if self.comm.Get_size() > 1:
            time.sleep(ABORT_GRACE if first else ECHO_WAIT)
            self.comm.Abort(1)
        sys.exit(1)
