"""The two small files beside a run record, ``RECORD.h5`` (:mod:`mpisgd.app.record`).

* ``RECORD.h5.lock``, rank 0's for the whole run (:func:`claim`, before the
  configuration agreement): an exclusive ``flock`` held open for the life of
  the process, the holder's pid and host written in it. A second job on the
  same record is refused with them. The kernel drops the lock when the
  process dies, so a killed job never leaves a stale lock (the file may
  stay; the next job reuses it).
* ``RECORD.h5.failed``: the run's first failure, ``rank R: Type: message``,
  written by the failing rank itself (:func:`note_failure`, the
  command line's abort hook). :meth:`~mpisgd.app.record.RunRecord.fail` stores it in preference
  to rank 0's own reason (which may be a consequence of it), and
  :func:`~mpisgd.app.record.read` reports it as the status of a record whose rank 0 was ended
  by the abort before it could write anything.

Why a note beside the record, not the failing rank writing the status into
the HDF5 file: HDF5 has no safe concurrent writers (two processes with the
file open for writing corrupt it), and rank 0 may be writing a log point at
that moment, or blocked in a collective, so it cannot hand the file over.
A lock around every write would not make it safe either: ``flock`` between
nodes depends on the filesystem (NFS emulates it, Lustre needs ``-o
flock``). A rank on another node shares only the filesystem with rank 0,
and there creating a file as a hard link to a fully written temporary is
atomic and exclusive (POSIX, NFS included): readers see the whole note or
none, and the first failure wins (later ones are mostly its echoes: a peer
died, or every rank hit the same error).
"""
from __future__ import annotations

import atexit
import fcntl
import os
import socket
from contextlib import suppress
from datetime import datetime, timezone

from ..errors import ConfigError

LOCK, FAILED = ".lock", ".failed"      # the sidecars' suffixes

_held: dict[str, int] = {}     # record (absolute path) -> the lock file this process holds


def stamp() -> str:
    """Now, in UTC, to the second (ISO 8601)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def claim(path: str, overwrite: bool = False, resume: bool = False) -> None:
    """Make ``path`` this run's record, before training (rank 0, in ``prepare``).

    Takes the lock (:func:`lock`); refuses an existing file unless
    ``overwrite`` or ``resume`` (a continuation rewrites its record); clears
    what an earlier run left: its failure note and, with ``overwrite``, its
    record — so a record never shows another run's rows, or its failure, under
    this run's name. ``ConfigError`` naming ``--out`` and the fix; ``OSError``
    if the lock file cannot be created.
    """
    lock(path)
    if os.path.exists(path) and not (overwrite or resume):
        unlock(path)
        raise ConfigError(f"--out {path} exists; give --overwrite to replace it, "
                          "--resume CHECKPOINT to continue its run, or another --out")
    _remove(path + FAILED)
    if overwrite and not resume:
        _remove(path)


def lock(path: str) -> None:
    """Hold the exclusive lock on record ``path`` until :func:`unlock` or the process ends.

    A ``flock`` on ``path.lock`` (kept open: the kernel releases it when the
    process dies), which says ``pid P on HOST, since T``. Taken at most once
    per process (a second call is a no-op). ``ConfigError`` naming the holder
    when another process has it.
    """
    key = os.path.abspath(path)
    if key in _held:
        return
    name = path + LOCK
    while True:          # read-only: a lock open for the whole run keeps no write open
        fd = os.open(name, os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 512).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(f"--out {path} is being written by another job ({holder}); "
                              "wait for it to end, or give another --out") from None
        try:
            if os.path.samestat(os.fstat(fd), os.stat(name)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)             # its holder removed it meanwhile (unlock): lock the new one
    try:
        with open(name, "w", encoding="utf-8") as f:
            f.write(f"pid {os.getpid()} on {socket.gethostname()}, since {stamp()}\n")
    except OSError:
        os.close(fd)                 # the lock goes with the descriptor
        raise
    _held[key] = fd


def unlock(path: str) -> None:
    """Release :func:`lock` (removing the lock file while still holding it)."""
    fd = _held.pop(os.path.abspath(path), None)
    if fd is not None:
        with suppress(OSError):      # a filesystem gone read-only keeps it: the next job reuses it
            os.remove(path + LOCK)
        os.close(fd)


@atexit.register
def _unlock_all() -> None:
    for key in list(_held):
        unlock(key)


def note_failure(path: str, rank: int, exc: BaseException) -> bool:
    """Note ``exc``, raised on ``rank``, as the failure of the run recorded at ``path``,
    unless a failure is noted already; returns whether this one was the first.

    Any rank may call it (the abort hook's ``on_error``): the note is written to a
    temporary file and hard-linked to ``path.failed`` (atomic, and it fails if
    the note exists). Where the filesystem has no hard links, renamed instead.
    """
    note, target = f"rank {rank}: {type(exc).__name__}: {exc}", path + FAILED
    tmp = f"{target}.{socket.gethostname()}.{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(note)
    except OSError:              # the filesystem that failed the run: stderr says it all
        return True
    try:
        os.link(tmp, target)
        return True
    except FileExistsError:
        return False
    except OSError:              # no hard links here: atomic, but not exclusive
        if os.path.exists(target):
            return False
        os.replace(tmp, target)
        return True
    finally:
        _remove(tmp)


def failure(path: str) -> str | None:
    """The failure noted beside record ``path`` (``rank R: Type: message``), or ``None``."""
    try:
        with open(path + FAILED, encoding="utf-8") as f:
            return f.read() or None
    except FileNotFoundError:
        return None


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
