"""The files a run writes: checked before training, and their failures said in one line.

A run writes its record (``--out``, rank 0) and its checkpoints
(``--checkpoint-dir``, every rank). :func:`check_dir` finds, before any
communication, what would stop a write later: a path that is a file or lies
below one, a directory that cannot be created, a filesystem that is
read-only or refuses a file. :func:`writing` turns a failure mid-run (ENOSPC,
EROFS, EIO, EDQUOT) into a :class:`~mpisgd.errors.StorageError` whose one line
names what was written, the path and the cause; :func:`torch_save` does the
same for ``torch.save``, which reports a full disk as ``RuntimeError:
[enforce fail at inline_container.cc:672] unexpected pos ...``.
"""
from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager

from .errors import ConfigError, StorageError


def check_dir(directory: str, flag: str) -> None:
    """``ConfigError`` naming ``flag`` unless files can be created in ``directory`` (or, when
    it does not exist yet, in its nearest existing ancestor, where it will be created). A
    file is created there and removed: the only test a read-only mount, a quota or a
    permission cannot fool."""
    path = os.path.abspath(directory)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{flag} {directory} is a file, not a directory")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"{flag} {directory}: {existing} is a file, so the directory cannot "
                          "be created below it")
    try:
        probe(existing)
    except OSError as err:
        raise ConfigError(f"{flag} {directory}: cannot write in {existing} "
                          f"({err.strerror or err})") from None


def probe(directory: str) -> None:
    """Create a file in ``directory`` and remove it; the ``OSError`` if that fails. The
    file's name (``.mpisgd-probe-*``) is no one's: a reader watching the directory for
    records or checkpoints never meets it."""
    fd, name = tempfile.mkstemp(prefix=".mpisgd-probe-", dir=directory)
    os.close(fd)
    os.remove(name)


def _errno(err: BaseException) -> int | None:
    """The errno behind ``err``: its own, or the one HDF5 writes into the ``RuntimeError``
    h5py raises when closing a file fails (``... errno = 28, error message = ...``)."""
    if getattr(err, "errno", None):
        return err.errno
    found = re.search(r"\berrno = (\d+)", str(err))
    return int(found.group(1)) if found and int(found.group(1)) else None


def cause(err: BaseException) -> str:
    """What went wrong, in words: the errno's text where the error has one."""
    errno = _errno(err)
    return os.strerror(errno) if errno else (str(err).splitlines() or [type(err).__name__])[0]


@contextmanager
def writing(what: str, path: str):
    """Turn an ``OSError`` inside the block (or h5py's ``RuntimeError`` carrying an errno)
    into a one-line :class:`StorageError`: ``cannot write WHAT PATH: CAUSE``."""
    try:
        yield
    except StorageError:
        raise
    except (OSError, RuntimeError) as err:
        if isinstance(err, RuntimeError) and _errno(err) is None:
            raise
        raise StorageError(f"cannot write {what} {path}: {cause(err)}") from err


class _Recording:
    """A file object that keeps the ``OSError`` its writes raised: torch.save replaces it
    with a ``RuntimeError`` that has lost the cause."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self):
        return self.f.flush()


def torch_save(obj, path: str) -> None:
    """``torch.save(obj, path)``; a failed write raises its ``OSError`` (ENOSPC, EIO, ...)."""
    import torch
    with open(path, "wb") as f:
        out = _Recording(f)
        try:
            torch.save(obj, out)
        except RuntimeError:
            if out.error is not None:
                raise out.error from None
            raise
