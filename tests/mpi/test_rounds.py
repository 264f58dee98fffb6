"""Rounds on a flat buffer, without an algorithm: a loop of your own (STYLE 1, 11).

Closed forms: ``ones * rank`` averages to (n - 1)/2; k mixings with W equal
W^k applied to the stacked values; one elastic round moves x_i and c by
alpha (x_i - c).
"""
import pytest
import torch

from mpisgd import topology
import expected_w
from mpisgd.algorithms.rounds import Average, Elastic, Mix
from mpisgd.comm import Comm


def values(comm, d=5):
    """x_i = (rank + 1) * (1, 2, ..., d), float64."""
    return (comm.Get_rank() + 1.0) * torch.arange(1, d + 1, dtype=torch.float64)


@pytest.mark.mpi(min_size=1)
def test_average_round_is_the_mean(comm):
    c, n = Comm(comm), comm.Get_size()
    x = torch.ones(7, dtype=torch.float64) * comm.Get_rank()
    buffers = torch.full((3,), 2.0 * comm.Get_rank(), dtype=torch.float64)
    Average(c, x, buffers).run()
    assert torch.equal(x, torch.full_like(x, (n - 1) / 2))
    assert torch.allclose(buffers, torch.full_like(buffers, n - 1.0), rtol=0, atol=1e-15)


@pytest.mark.mpi(min_size=1)
@pytest.mark.parametrize("name", ["ring", "complete", "one-peer-exponential"])
def test_mix_rounds_equal_the_matrix_product(comm, name):
    c, n, i = Comm(comm), comm.Get_size(), comm.Get_rank()
    t = topology.build(name, n)
    expected = expected_w.rounds(name, n)          # written out, not t.matrix
    x = values(comm)
    X = torch.stack([(j + 1.0) * torch.arange(1, 6, dtype=torch.float64) for j in range(n)], 1)
    mix = Mix(c, t, x)
    for k in range(3):
        mix.run(k)
        X = X @ expected(k).T          # x_i <- sum_j W[i, j] x_j: rows of W act on columns of X
    mix.close()
    assert torch.allclose(x, X[:, i], rtol=1e-12, atol=1e-12)


@pytest.mark.mpi(min_size=1)
@pytest.mark.parametrize("center", ["replicated", "rank0"])
def test_elastic_round_closed_form(comm, center):
    c = Comm(comm)
    x = values(comm)
    r = Elastic(c, x, alpha=0.1, center=center)
    c0 = torch.linspace(-1.0, 1.0, len(x), dtype=torch.float64)   # the same c everywhere
    if r.holds:
        r.center.copy_(c0)
    mine = x.clone()
    r.run()
    assert torch.allclose(x, mine - 0.1 * (mine - c0), rtol=1e-14, atol=1e-14)
    everyone = torch.stack(comm.allgather(mine))
    expected = c0 + 0.1 * (everyone - c0).sum(0)
    assert torch.allclose(r.consensus(c.sibling()), expected, rtol=1e-13, atol=1e-13)
