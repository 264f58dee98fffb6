"""The HDF5 run record (its contract: docs/user-guide.md), written by rank 0.

Layout:

* root attributes: ``config`` (JSON), ``mpisgd_version``, ``mpi_library``,
  ``world_size``, ``workers``, ``streams`` (the random streams' version,
  :mod:`mpisgd.streams`), ``status`` (``completed``, ``failed: <reason>``
  or ``interrupted: SIGTERM at step S, checkpoint DIR``), ``started``, ``finished``,
  ``warnings`` when there are any (e.g. a loss that stayed at its start), ``task``
  (``language model`` for ``--data text``: losses in nats per byte);
* ``/metrics/<name>``: 1-D datasets of equal length, one row per log point:
  ``step``, ``wall_time``, ``train_loss``, ``test_loss``, ``test_error``,
  ``rounds``, ``bytes_sent``, ``consensus_distance`` (mean over workers of
  ||x_i - xbar||^2), ``lr`` (rank 0's rate for the step after the row);
* ``/ranks/<name>``: one value per rank: ``compute_time``, ``comm_time``,
  ``wait_time``, ``staging_time`` (device copies of the host staging, CUDA
  events), ``steps``, ``bytes_sent``, ``skipped_steps`` (steps fp16's gradient scaler
  skipped); and the strings ``host`` and ``device``
  (``cpu``, ``cuda:0``, ...): where each rank ran;
* ``/final/params``: the consensus model, flat float32, in
  ``model.parameters()`` order.

Every write publishes a new version of the file: the writer copies the
record, changes the copy (in memory), writes it to ``RECORD.h5.new`` and
renames that over ``RECORD.h5`` (:meth:`RunRecord.edit`). So

* a reader never stops the run, whatever it holds: an ``h5py.File`` kept
  open in a notebook, ``h5dump``, ``mpisgd report`` at any rate. It holds
  the version it opened (the kernel keeps a renamed-over file alive for
  its readers; on NFS, a reader on another host may instead get "stale
  file handle" from a version replaced under it, and opens it again) and
  sees the rows logged since when it opens the file again. The writer never opens a file a reader can see, so HDF5's file
  lock never meets it;
* every version is a whole HDF5 file, closed by the writer before anyone
  can open it: a reader sees a prefix of the rows, every metric as long as
  the others; a job killed at any moment leaves the last version, readable
  by any HDF5 tool, with every row logged before it;
* a failed write (a full disk, a read-only or failing filesystem) leaves
  the last version as it was.

Why not HDF5's single-writer/multiple-reader mode (SWMR), the mechanism the
issue that led here named: it keeps the file open for the whole run, so a
reader that does not ask for SWMR (``h5py.File(path)``, the default in
every notebook) is refused while the run lives, and after a job is killed
(a time limit, an out-of-memory kill), as the file's superblock still says
it is open for writing, until someone runs ``h5clear`` (not shipped with
h5py); SWMR needs POSIX write ordering, which NFS does not give; and a
SWMR writer cannot add the groups and attributes the end of a run writes.
The price of a new version per write is a copy of the record (a few kB
during training: the rows) and an ``fsync``: 1.3-2x the time of an append in
place, about 2 ms more per log point (benchmarks/bench_record.py,
docs/benchmarks.md).

Until :meth:`RunRecord.complete` the status says the job ended early;
:meth:`RunRecord.fail` stores the reason.

Beside ``RECORD.h5`` stand its lock and its first failure's note
(:mod:`mpisgd.app.sidecars`).
"""
from __future__ import annotations

import errno
import io
import json
import os
import warnings
from contextlib import contextmanager, suppress

import h5py
import numpy as np

from .. import storage, streams
from .sidecars import failure, lock, stamp

METRICS = ("step", "wall_time", "train_loss", "test_loss", "test_error", "rounds", "bytes_sent",
           "consensus_distance", "lr")
RANK_FIELDS = ("compute_time", "comm_time", "wait_time", "staging_time", "steps", "bytes_sent",
               "skipped_steps")
INTERRUPTED = "failed: the job ended before the run completed (killed or timed out)"


class RunRecord:
    """Create the record at ``path`` with the run's configuration (replacing a file there).

    Takes the record's lock (:func:`lock`) if this process does not hold it yet.
    ``rows``: for a continuation (``--resume``), the ``METRICS`` name -> values
    logged up to its checkpoint; they are the fresh record's first rows, and
    rows the interrupted run logged after its checkpoint are gone with its file.
    Every method publishes a new version of the file (:meth:`edit`), or, inside
    ``with record.edit():``, adds to the version that block publishes.
    """

    def __init__(self, path: str, config: dict, world_size: int, workers: int,
                 mpi_library: str, version: str, rows: dict | None = None):
        self.path = path
        self._open: h5py.File | None = None     # the version being written, inside edit()
        self._image = b""                        # the last version published, in memory
        columns = _columns(rows or {name: [] for name in METRICS})
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        lock(path)
        with self.edit(fresh=True) as f:
            f.attrs.update(config=json.dumps(config, sort_keys=True, default=str),
                           mpisgd_version=version, mpi_library=mpi_library,
                           world_size=world_size, workers=workers, status=INTERRUPTED,
                           started=stamp(), finished="", streams=streams.VERSION)
            group = f.create_group("metrics")
            for name, values in columns.items():
                group.create_dataset(name, data=values, maxshape=(None,), chunks=(256,))

    @contextmanager
    def edit(self, fresh: bool = False):
        """The next version of the record, open for writing: a copy of the current one
        (an empty file if ``fresh``), renamed over it when the block ends without an
        error. Readers never see it half-written; on an error the current version stays.
        Nested calls write into the outer block's version.

        HDF5 writes the version in memory, from the last one this process published (the
        record is this process's alone: it holds the lock); only Python's own I/O touches
        the disk, so a failing disk raises a clean ``OSError`` here (a
        :class:`StorageError`), never inside HDF5 (which then fails again, at random,
        when h5py frees the file). Each version is on disk (``fsync``) before it replaces
        the last, so a node that crashes leaves one or the other whole."""
        if self._open is not None:
            yield self._open
            return
        image = io.BytesIO(b"" if fresh else self._image)
        try:
            with h5py.File(image, "w" if fresh else "a") as f:
                self._open = f
                yield f
        finally:
            self._open = None
        new = self.path + ".new"
        try:
            with storage.writing("the run record", self.path):
                with open(new, "wb") as out:
                    out.write(image.getbuffer())
                    out.flush()
                    os.fsync(out.fileno())       # whole on disk before it replaces the last
                os.replace(new, self.path)
        except BaseException:
            with suppress(OSError):      # gone already, or the filesystem refuses even that
                os.remove(new)
            raise
        self._image = image.getvalue()   # the next version starts from this one

    def log(self, **row: float) -> None:
        """Append one log point; every name in ``METRICS`` must be given."""
        missing = set(METRICS) - set(row)
        if missing:
            raise ValueError(f"log point lacks {sorted(missing)}")
        with self.edit() as f:
            for name in METRICS:
                ds = f["metrics"][name]
                ds.resize((ds.shape[0] + 1,))
                ds[-1] = row[name]

    def series(self, group: str, name: str, values) -> None:
        """Store an algorithm-owned array at ``/group/name`` (replacing it)."""
        with self.edit() as f:
            g = f.require_group(group)
            if name in g:
                del g[name]
            if len(values) and all(isinstance(v, str) for v in values):
                g.create_dataset(name, data=np.array(values, dtype=h5py.string_dtype()))
            else:
                g.create_dataset(name, data=np.asarray(values))

    def complete(self, ranks: dict, params) -> None:
        """Write per-rank figures and the final model, and mark the run completed."""
        with self.edit():
            for name in RANK_FIELDS:
                self.series("ranks", name, ranks[name])
            self.series("final", "params", np.asarray(params, dtype=np.float32))
            self._status("completed")

    def fail(self, reason: str) -> None:
        """Mark the run failed: the first failure a rank noted (:func:`note_failure`), else
        ``reason``. Where the disk that failed the run refuses a new version too, the last
        version stays as it was (a change in place could corrupt it: seen on a full
        tmpfs), and the failure note the abort hook writes beside it, if it can, is what
        :func:`read` reports."""
        try:
            self._status(f"failed: {failure(self.path) or reason}")
        except OSError:
            pass

    def warn(self, text: str) -> None:
        """Add ``text`` to the root attribute ``warnings`` (one per line): what a run's
        figures do not say, e.g. that its loss never moved."""
        with self.edit() as f:
            old = f.attrs.get("warnings", "")
            f.attrs["warnings"] = (old + "\n" if old else "") + text

    def attribute(self, name: str, text) -> None:
        """Set the root attribute ``name`` to ``text`` (e.g. ``compression``: whether it paid)."""
        with self.edit() as f:
            f.attrs[name] = text

    def stopped(self, status: str) -> None:
        """Mark a run that every rank ended early alike: ``interrupted: ...`` (a signal; a
        checkpoint was written) or ``failed: non-finite ...``."""
        self._status(status)

    def _status(self, status: str) -> None:
        with self.edit() as f:
            f.attrs["status"] = status
            f.attrs["finished"] = stamp()


class KeptWarnings:
    """While active, every warning shown is also kept (:attr:`pending`), for the record's
    ``warnings`` (:meth:`into`): what the run said on stderr stays with its figures."""

    def __init__(self):
        self.pending: list[str] = []

    def __enter__(self) -> "KeptWarnings":
        self._shown = shown = warnings.showwarning

        def show(message, *args, **kwargs):
            self.pending.append(str(message))
            shown(message, *args, **kwargs)
        warnings.showwarning = show
        return self

    def __exit__(self, *exc) -> None:
        warnings.showwarning = self._shown

    def into(self, record: RunRecord | None) -> None:
        """Add the warnings kept so far to ``record`` (rank 0's; ``None`` elsewhere, where
        they are dropped: the other ranks' warnings are not shown either)."""
        if record is not None and self.pending:
            with record.edit():
                for text in self.pending:
                    record.warn(text)
        self.pending.clear()


def read(path: str) -> dict:
    """A record as a dict: ``attrs``, ``config``, ``metrics``, ``ranks``, ``final``.

    A record that says the job ended early, beside a failure a rank noted, reads
    as ``failed: rank R: ...``.
    """
    with _open_for_reading(path) as f:
        out = {"path": path, "attrs": dict(f.attrs),
               "metrics": {k: f["metrics"][k][()] for k in f.get("metrics", {})},
               "ranks": {k: _value(f["ranks"][k]) for k in f.get("ranks", {})},
               "final": {k: f["final"][k][()] for k in f.get("final", {})},
               "steps": {k: f["steps"][k][()] for k in f.get("steps", {})}}
    out["config"] = json.loads(out["attrs"].get("config", "{}"))
    note = failure(path) if out["attrs"].get("status") == INTERRUPTED else None
    if note:
        out["attrs"]["status"] = f"failed: {note}"
    return out


def _open_for_reading(path: str, tries: int = 3) -> h5py.File:
    """``path`` opened read-only, without HDF5's file lock: a published version of a
    record never changes (:meth:`RunRecord.edit`), so a reader needs no lock, and
    holds none that anything could meet. On NFS a version replaced between the lookup
    and the open gives ``ESTALE``: the open is tried again."""
    for attempt in range(tries):
        try:
            return h5py.File(path, "r", locking=False)
        except OSError as err:
            if getattr(err, "errno", None) != errno.ESTALE or attempt == tries - 1:
                raise


def _columns(rows: dict) -> dict:
    """``rows`` (every name in ``METRICS`` -> values, all as long) as float64 arrays."""
    missing = set(METRICS) - set(rows)
    if missing:
        raise ValueError(f"rows lack {sorted(missing)}")
    columns = {name: np.asarray(rows[name], dtype="f8").reshape(-1) for name in METRICS}
    if len({len(c) for c in columns.values()}) > 1:
        raise ValueError("rows must have as many values for every metric")
    return columns


def _value(ds):
    """A dataset's contents; strings as ``str`` (h5py gives bytes)."""
    return ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) else ds[()]
