"""Agreement on validation: every rank learns that one rank failed, and which."""
import pytest
from mpi4py import MPI

from mpisgd.errors import ConfigError, agree


@pytest.mark.mpi(min_size=2)
def test_one_rank_failing_validation_stops_every_rank():
    comm = MPI.COMM_WORLD
    bad = comm.size - 1
    error = "--data hdf5:/x.h5: no such file: /x.h5" if comm.rank == bad else None
    with pytest.raises(ConfigError) as info:
        agree(comm, error, "same")
    expected = error if comm.rank == bad else f"rank {bad}: --data hdf5:/x.h5: no such file: /x.h5"
    assert str(info.value) == expected
    assert info.value.echo == (comm.rank != 0)      # rank 0 alone prints it, naming the rank


@pytest.mark.mpi(min_size=2)
def test_ranks_that_disagree_on_the_configuration():
    comm = MPI.COMM_WORLD
    disagree = r"ranks disagree on the configuration .* ranks \[1\]"
    with pytest.raises(ConfigError, match=disagree) as info:
        agree(comm, None, "b" if comm.rank == 1 else "a")
    assert info.value.echo == (comm.rank != 0)
    agree(comm, None, "a")      # agreement passes silently
