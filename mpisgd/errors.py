"""Errors, and how a failure on one rank ends the whole job.

MPI has no notion of a Python exception: a rank that dies while the others
sit in a collective leaves them waiting (MPICH spins at 100% CPU until the
batch system kills the job). mpisgd therefore

* validates configuration on every rank before the first message, and
  :func:`agree` s on the outcome with one ``allgather`` that every rank is
  guaranteed to reach, so a bad option ends every rank cleanly with the same
  one-line message and exit status 2;
* installs :func:`abort_on_exception` in the command-line driver, so an
  exception raised later on any one rank prints that rank's traceback and
  calls ``MPI_Abort``, which ends every rank of the job.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
import traceback

#: Seconds between printing a failing rank's traceback and ``MPI_Abort``: the launcher
#: forwards output through pipes, and an abort that comes first can lose it (seen under load).
ABORT_GRACE = 0.3


class ConfigError(ValueError):
    """A bad option, file or rank count, detected before any communication."""


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
    the first bad rank.
    """
    mine = _portable(error)
    if comm.Get_size() == 1:
        if error:
            raise _raised(mine)
        return
    results = comm.allgather((mine, key))
    for rank, (err, _) in enumerate(results):
        if err:
            same = rank == comm.Get_rank() or err == mine
            raise _raised(err, None if same else rank)
    keys = {k for _, k in results}
    if len(keys) > 1:
        ranks = [r for r, (_, k) in enumerate(results) if k != results[0][1]]
        raise ConfigError(
            f"ranks disagree on the configuration (rank 0 differs from ranks {ranks}); "
            "every rank must run the same command with the same options and files")


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

    Installs a ``sys.excepthook`` that prints the traceback prefixed with the
    rank, calls ``on_error(exc)`` (rank 0 uses it to mark its run record
    failed), and then ``comm.Abort(1)`` when more than one rank runs.
    """
    def hook(kind, exc, tb):
        rank = comm.Get_rank()
        text = "".join(traceback.format_exception(kind, exc, tb))
        sys.stderr.write("".join(f"[rank {rank}] {line}\n" for line in text.splitlines()))
        sys.stderr.flush()
        if on_error is not None:
            try:
                on_error(exc)
            except Exception as inner:  # the record must not mask the real error
                sys.stderr.write(f"[rank {rank}] while recording the failure: {inner}\n")
        if comm.Get_size() > 1:
            time.sleep(ABORT_GRACE)   # the launcher forwards this rank's message before the kill
            comm.Abort(1)
        sys.exit(1)

    sys.excepthook = hook
