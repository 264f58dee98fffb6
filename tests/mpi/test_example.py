"""The documented API example runs under mpiexec and learns."""
import os
import sys

import pytest
import torch
from mpi4py import MPI

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "docs", "examples"))
import api_local  # noqa: E402


@pytest.mark.mpi(min_size=2)
def test_api_example_learns_and_agrees():
    error, theta = api_local.main(MPI.COMM_WORLD, steps=150)
    assert error < 0.15
    everyone = MPI.COMM_WORLD.allgather(theta)
    assert all(torch.equal(t, everyone[0]) for t in everyone)


@pytest.mark.mpi(min_size=3)
def test_api_example_with_a_dedicated_centre():
    error, theta = api_local.main(MPI.COMM_WORLD, steps=150, algo_name="async-easgd", tau=4)
    assert error < 0.15
    everyone = MPI.COMM_WORLD.allgather(theta)
    assert all(torch.equal(t, everyone[0]) for t in everyone)
