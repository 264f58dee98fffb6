"""The gpt model on a text under mpiexec, for sync, local SGD and a server family: the test
loss falls well below chance, the record is a language model's, the summary's perplexity is
exp(test loss)."""
import math
import os

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from mpisgd.app import train
from mpisgd.app.config import from_sources

MODEL = "gpt:1,32,2,16"


@pytest.fixture
def text(shared_dir):
    """A text with structure a small model learns (counting words), written by rank 0."""
    path = os.path.join(shared_dir, "text.txt")
    if MPI.COMM_WORLD.rank == 0:
        with open(path, "w") as f:
            f.write(" ".join(f"w{i % 17}" for i in range(2000)))
    MPI.COMM_WORLD.Barrier()
    return path


@pytest.mark.mpi(min_size=3)
@pytest.mark.parametrize("algo, extra", [("sync", {}), ("local", {"tau": 4}),
                                         ("ps-sync", {})])
def test_gpt_learns_a_text_with_every_family(shared_dir, text, algo, extra):
    out = os.path.join(shared_dir, f"{algo}.h5")
    flags = {"optimizer": "adamw", "lr": 0.01, **extra}
    cfg = from_sources(None, dict(algo=algo, model=MODEL, data=f"text:{text}", steps=30,
                                  log_every=10, batch_size=8, out=out, threads=1, **flags))
    summary = train.run(cfg, MPI.COMM_WORLD, quiet=True)
    MPI.COMM_WORLD.Barrier()
    if MPI.COMM_WORLD.rank != 0:
        return
    assert summary["perplexity"] == pytest.approx(math.exp(summary["test_loss"]))
    with h5py.File(out, "r") as f:
        assert f.attrs["task"] == "language model" and f.attrs["status"] == "completed"
        loss = f["metrics"]["test_loss"][()]
        assert loss[-1] < math.log(256) - 1.5 and loss[-1] < loss[0]   # nats per byte
        assert np.all(f["metrics"]["bytes_sent"][()] > 0)
