"""The training driver end to end under mpiexec: the run record's schema, and report."""
import json
import os
import tempfile

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from mpisgd import cli, train
from mpisgd.config import from_sources
from mpisgd.record import METRICS, RANK_FIELDS


@pytest.fixture
def shared_dir():
    comm = MPI.COMM_WORLD
    path = comm.bcast(tempfile.mkdtemp(prefix="mpisgd-test-") if comm.rank == 0 else None)
    yield path


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("algo, extra", [("sync", {}), ("local", {"tau": 4})])
def test_train_writes_the_documented_record(shared_dir, algo, extra):
    comm = MPI.COMM_WORLD
    out = os.path.join(shared_dir, f"{algo}.h5")
    cfg = from_sources(None, dict(algo=algo, steps=40, log_every=10, out=out, threads=1, **extra))
    summary = train.run(cfg, comm, quiet=True)
    comm.Barrier()
    if comm.rank != 0:
        assert summary == {}
        return
    with h5py.File(out, "r") as f:
        attrs = dict(f.attrs)
        assert attrs["status"] == "completed"
        assert attrs["world_size"] == comm.size and attrs["workers"] == comm.size
        assert attrs["mpi_library"].startswith(("MPICH", "Open MPI", "Intel"))
        assert json.loads(attrs["config"])["algo"] == algo
        for key in ("mpisgd_version", "started", "finished"):
            assert attrs[key]
        lengths = {f["metrics"][m].shape[0] for m in METRICS}
        assert lengths == {4}
        m = {k: f["metrics"][k][()] for k in METRICS}
        assert list(m["step"]) == [10, 20, 30, 40]
        assert np.all(np.diff(m["wall_time"]) > 0) and np.all(np.diff(m["bytes_sent"]) > 0)
        assert m["train_loss"][-1] < m["train_loss"][0]
        assert np.all((0 <= m["test_error"]) & (m["test_error"] <= 1))
        expected_rounds = 40 if algo == "sync" else 10
        assert m["rounds"][-1] == expected_rounds
        for name in RANK_FIELDS:
            assert f["ranks"][name].shape == (comm.size,)
        assert list(f["ranks"]["steps"][()]) == [40] * comm.size
        assert f["final"]["params"].dtype == np.float32
        assert f["final"]["params"].shape == (26122,)      # the default MLP on digits
    png = os.path.join(shared_dir, f"{algo}.png")
    assert cli.main(["report", out, "--out", png]) == 0
    assert os.path.getsize(png) > 10_000
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.mpi(min_size=3)
@pytest.mark.parametrize("algo", ["async-easgd", "eamsgd", "downpour"])
def test_dedicated_centre_run_records_the_centre(shared_dir, algo):
    """Rank 0 only serves; the record counts workers, and the centre's counters."""
    comm = MPI.COMM_WORLD
    out = os.path.join(shared_dir, f"{algo}.h5")
    plain = {} if algo == "eamsgd" else {"momentum": 0.0}   # eamsgd's momentum is --delta
    cfg = from_sources(None, dict(algo=algo, steps=40, log_every=10, out=out, threads=1, tau=2,
                                  **plain))
    summary = train.run(cfg, comm, quiet=True)
    comm.Barrier()
    if comm.rank != 0:
        return
    assert summary["workers"] == comm.size - 1 and summary["kernels"]
    with h5py.File(out, "r") as f:
        assert f.attrs["status"] == "completed" and f.attrs["workers"] == comm.size - 1
        m = {k: f["metrics"][k][()] for k in METRICS}
        assert list(m["step"]) == [10, 20, 30, 40] and list(m["rounds"]) == [5, 10, 15, 20]
        assert m["train_loss"][-1] < m["train_loss"][0]
        assert list(f["ranks"]["steps"][()]) == [0] + [40] * (comm.size - 1)
        centre = {k: f["center"][k][()] for k in f["center"]}
        kind = "push_pull" if algo == "downpour" else "push"
        assert list(centre[kind]) == [20] * (comm.size - 1)
        assert list(centre["sync"]) == [3] * (comm.size - 1)      # the 3 log points before the last
        assert list(centre["done"]) == [1] * (comm.size - 1)
        assert centre["exchanges_per_s"] > 0


@pytest.mark.mpi(min_size=3)
def test_dedicated_centre_shards_the_data_over_the_workers():
    comm = MPI.COMM_WORLD
    cfg = from_sources(None, dict(algo="async-easgd", steps=5, threads=1, out="/tmp/unused.h5"))
    data, shards, _ = train.prepare(cfg, comm)
    assert len(shards) == comm.size - 1                   # every sample has a worker
    assert sum(len(s) for s in shards) == len(data.y_train)
