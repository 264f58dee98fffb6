"""The gpt model on a text under mpiexec, for sync, local SGD and a server family: the test
loss falls well below chance, the record is a language model's, the summary's perplexity is
exp(test loss)."""
import math

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from helpers import train_record

MODEL = "gpt:1,32,2,16"


@pytest.mark.mpi(min_size=3)
@pytest.mark.parametrize("algo, extra", [("sync", {}), ("local", {"tau": 4}),
                                         ("ps-sync", {})])
def test_gpt_learns_a_text_with_every_family(shared_dir, text, algo, extra):
    flags = {"optimizer": "adamw", "lr": 0.01, **extra}
    out, summary = train_record(shared_dir, algo, algo=algo, model=MODEL, data=f"text:{text}",
                                steps=30, log_every=10, batch_size=8, **flags)
    if MPI.COMM_WORLD.rank != 0:
        return
    assert summary["perplexity"] == pytest.approx(math.exp(summary["test_loss"]))
    with h5py.File(out, "r") as f:
        assert f.attrs["task"] == "language model" and f.attrs["status"] == "completed"
        loss = f["metrics"]["test_loss"][()]
        assert loss[-1] < math.log(256) - 1.5 and loss[-1] < loss[0]   # nats per byte
        assert np.all(f["metrics"]["bytes_sent"][()] > 0)
