"""The communicators every distributed test runs on (mpi4py's own test pattern), a
directory every rank shares, and a text every rank reads."""
import os
import shutil
import tempfile

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


@pytest.fixture
def shared_dir():
    """A fresh directory, the same on every rank (made by rank 0), removed afterwards."""
    comm = MPI.COMM_WORLD
    path = comm.bcast(tempfile.mkdtemp(prefix="mpisgd-test-") if comm.rank == 0 else None)
    yield path
    comm.Barrier()
    if comm.rank == 0:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def text(shared_dir):
    """A text with structure a small language model learns (counting words), written by
    rank 0 into the shared directory."""
    path = os.path.join(shared_dir, "text.txt")
    if MPI.COMM_WORLD.rank == 0:
        with open(path, "w") as f:
            f.write(" ".join(f"w{i % 17}" for i in range(2000)))
    MPI.COMM_WORLD.Barrier()
    return path

