"""mpisgd.build checks the MPISGD_* environment inside its agreement: a bad value on one
rank ends every rank with that rank's message, before any other communication."""
import pytest
import torch
from mpi4py import MPI

import mpisgd
from mpisgd.errors import ConfigError


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("algo, name, value", [("sync", "MPISGD_WAIT", "nap"),
                                               ("ps-sync", "MPISGD_STAGINGG", "never")])
def test_a_bad_variable_on_one_rank_stops_build_on_every_rank(monkeypatch, algo, name, value):
    comm = MPI.COMM_WORLD
    bad = comm.size - 1
    if comm.rank == bad:
        monkeypatch.setenv(name, value)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError) as info:
        mpisgd.build(algo, model, opt, comm=comm)
    text = str(info.value)
    assert text.startswith(f"{name} " if comm.rank == bad else f"rank {bad}: {name} ")
    monkeypatch.undo()
    again = mpisgd.build("sync", model, opt, comm=comm)      # the ranks still agree afterwards
    again.close()
