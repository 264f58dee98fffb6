"""The HDF5 run record (its contract: docs/user-guide.md), written by rank 0.

Layout:

* root attributes: ``config`` (JSON), ``mpisgd_version``, ``mpi_library``,
  ``world_size``, ``workers``, ``status`` (``completed`` or
  ``failed: <reason>``), ``started``, ``finished``;
* ``/metrics/<name>``: 1-D datasets of equal length, one row per log point:
  ``step``, ``wall_time``, ``train_loss``, ``test_loss``, ``test_error``,
  ``rounds``, ``bytes_sent``, ``consensus_distance`` (mean over workers of
  ||x_i - xbar||^2);
* ``/ranks/<name>``: one value per rank: ``compute_time``, ``comm_time``,
  ``wait_time``, ``staging_time`` (device copies of the host staging, CUDA
  events), ``steps``, ``bytes_sent``; and the strings ``host`` and ``device``
  (``cpu``, ``cuda:0``, ...): where each rank ran;
* ``/final/params``: the consensus model, flat float32, in
  ``model.parameters()`` order.

The file is opened and closed at every write, so a job killed between log
points leaves a readable record. Until :meth:`RunRecord.complete` its status
says the job ended early; :meth:`RunRecord.fail` stores the reason.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone

import h5py
import numpy as np

METRICS = ("step", "wall_time", "train_loss", "test_loss", "test_error", "rounds", "bytes_sent",
           "consensus_distance")
RANK_FIELDS = ("compute_time", "comm_time", "wait_time", "staging_time", "steps", "bytes_sent")
INTERRUPTED = "failed: the job ended before the run completed (killed or timed out)"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunRecord:
    """Create the record at ``path`` (overwriting) with the run's configuration."""

    def __init__(self, path: str, config: dict, world_size: int, workers: int,
                 mpi_library: str, version: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with h5py.File(path, "w") as f:
            f.attrs.update(config=json.dumps(config, sort_keys=True, default=str),
                           mpisgd_version=version, mpi_library=mpi_library,
                           world_size=world_size, workers=workers, status=INTERRUPTED,
                           started=_now(), finished="")
            group = f.create_group("metrics")
            for name in METRICS:
                group.create_dataset(name, (0,), maxshape=(None,), dtype="f8", chunks=(256,))

    def log(self, **row: float) -> None:
        """Append one log point; every name in ``METRICS`` must be given."""
        missing = set(METRICS) - set(row)
        if missing:
            raise ValueError(f"log point lacks {sorted(missing)}")
        with h5py.File(self.path, "a") as f:
            for name in METRICS:
                ds = f["metrics"][name]
                ds.resize((ds.shape[0] + 1,))
                ds[-1] = row[name]

    def series(self, group: str, name: str, values) -> None:
        """Store an algorithm-owned array at ``/group/name`` (replacing it)."""
        with h5py.File(self.path, "a") as f:
            g = f.require_group(group)
            if name in g:
                del g[name]
            if len(values) and all(isinstance(v, str) for v in values):
                g.create_dataset(name, data=np.array(values, dtype=h5py.string_dtype()))
            else:
                g.create_dataset(name, data=np.asarray(values))

    def complete(self, ranks: dict, params) -> None:
        """Write per-rank figures and the final model, and mark the run completed."""
        for name in RANK_FIELDS:
            self.series("ranks", name, ranks[name])
        self.series("final", "params", np.asarray(params, dtype=np.float32))
        self._status("completed")

    def fail(self, reason: str) -> None:
        self._status(f"failed: {reason}")

    def _status(self, status: str) -> None:
        with h5py.File(self.path, "a") as f:
            f.attrs["status"] = status
            f.attrs["finished"] = _now()


def read(path: str) -> dict:
    """A record as a dict: ``attrs``, ``config``, ``metrics``, ``ranks``, ``final``."""
    with h5py.File(path, "r") as f:
        out = {"path": path, "attrs": dict(f.attrs),
               "metrics": {k: f["metrics"][k][()] for k in f.get("metrics", {})},
               "ranks": {k: _value(f["ranks"][k]) for k in f.get("ranks", {})},
               "final": {k: f["final"][k][()] for k in f.get("final", {})}}
    out["config"] = json.loads(out["attrs"].get("config", "{}"))
    return out


def _value(ds):
    """A dataset's contents; strings as ``str`` (h5py gives bytes)."""
    return ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) else ds[()]
