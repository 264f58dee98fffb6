"""The communicators every distributed test runs on (mpi4py's own test pattern)."""
import pytest
from mpi4py import MPI


@pytest.fixture(params=["self", "world", "dup"])
def comm(request):
    """COMM_SELF (size 1), COMM_WORLD, and a Dup of COMM_WORLD."""
    if request.param == "self":
        yield MPI.COMM_SELF
    elif request.param == "world":
        yield MPI.COMM_WORLD
    else:
        dup = MPI.COMM_WORLD.Dup()
        yield dup
        dup.Free()
