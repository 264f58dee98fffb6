"""Synchronous EASGD against the dense oracle of the paper's simultaneous rule.

X <- X W_alpha - eta G (reference.cooperative with simultaneous=True), float64
throughout: the tolerance covers summation order only.
"""
import pytest
import torch
from mpi4py import MPI

import mpisgd
from mpisgd import reference
import expected_w
from helpers import ATOL, D, RTOL, regression_grad, regression_loss, regression_model

ETA = 0.05


def x0():
    return torch.linspace(-1.0, 1.0, D, dtype=torch.float64)


def run_easgd(steps, comm, **options):
    model = regression_model(x0())
    opt = torch.optim.SGD(model.parameters(), lr=ETA)
    algo = mpisgd.build("easgd", model, opt, comm=comm, **options)
    trace, centres = [], []
    for step in range(steps):
        opt.zero_grad()
        regression_loss(model, comm.rank, step).backward()
        algo.step()
        trace.append(algo.flat.data.clone())
        centres.append(algo.consensus())
    return algo, trace, centres


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("center", ["replicated", "rank0"])
@pytest.mark.parametrize("tau", [1, 3])
def test_easgd_equals_the_simultaneous_oracle(comm, center, tau):
    size, rank = comm.size, comm.rank
    steps = 3 * tau + 2
    algo, trace, centres = run_easgd(steps, comm, tau=tau, center=center)
    alpha = 0.9 / size                     # the paper's default: beta = 0.9
    assert algo.alpha == pytest.approx(alpha)
    _, oracle = reference.cooperative(x0(), regression_grad, ETA,
                                      expected_w.w_alpha(size, alpha), steps, tau=tau, v=1,
                                      trace=True, simultaneous=True)
    for k in range(steps):
        assert torch.allclose(trace[k], oracle[k][:, rank], rtol=RTOL, atol=ATOL), k
        assert torch.allclose(centres[k], oracle[k][:, size], rtol=RTOL, atol=ATOL), k
    assert algo.rounds == steps // tau


@pytest.mark.mpi(min_size=2)
def test_compressed_easgd_equals_the_oracle_when_the_codec_is_exact(comm):
    """top-k with ratio 1 sends every e_i: the compressed round is the plain one."""
    size, rank, tau, steps = comm.size, comm.rank, 2, 8
    algo, trace, centres = run_easgd(steps, comm, tau=tau, compress="topk:1.0")
    assert algo.round.mean is not None
    _, oracle = reference.cooperative(x0(), regression_grad, ETA,
                                      expected_w.w_alpha(size, algo.alpha), steps, tau=tau, v=1,
                                      trace=True, simultaneous=True)
    for k in range(steps):
        assert torch.allclose(trace[k], oracle[k][:, rank], rtol=RTOL, atol=ATOL), k
        assert torch.allclose(centres[k], oracle[k][:, size], rtol=RTOL, atol=ATOL), k
    algo.close()


@pytest.mark.mpi(min_size=2)
def test_int8_easgd_keeps_one_centre_sends_less_and_stays_close():
    """A lossy codec: every rank decodes the same data, so c stays one value everywhere;
    int8 sends at most half the Allreduce's bytes of this float64 model of a few elements
    (an eighth plus a scale per block); the error is fed back, so the centre stays near
    the exact run's."""
    comm = MPI.COMM_WORLD
    steps, tau = 12, 2
    exact, _, exact_c = run_easgd(steps, comm, tau=tau)
    lossy, _, lossy_c = run_easgd(steps, comm, tau=tau, compress="int8")
    mine = lossy.round.center.clone()
    everyone = comm.allgather(mine)
    assert all(torch.equal(c, mine) for c in everyone)
    figures = lossy.worker_series()
    assert figures["compress/rounds"] == steps // tau
    assert 0 < figures["compress/bytes"] <= 0.5 * figures["compress/dense_bytes"]
    assert lossy.stats()["bytes_sent"] < exact.stats()["bytes_sent"]
    assert torch.allclose(lossy_c[-1], exact_c[-1], atol=0.05)
    assert not torch.equal(lossy_c[-1], exact_c[-1])          # it is lossy
    exact.close()
    lossy.close()


def test_simultaneous_oracle_is_the_papers_rule():
    """The matrix form written out element-wise: x_i - eta g_i - alpha (x_i - c); c + alpha sum (x_i - c)."""
    m, alpha, steps = 3, 0.2, 4
    X = x0()[:, None].repeat(1, m + 1)
    for k in range(steps):
        G = regression_grad(k, X[:, :m])
        e = alpha * (X[:, :m] - X[:, m:])
        X = torch.cat([X[:, :m] - ETA * G - e, X[:, m:] + e.sum(1, keepdim=True)], 1)
    oracle = reference.cooperative(x0(), regression_grad, ETA, expected_w.w_alpha(m, alpha),
                                   steps, v=1, simultaneous=True)
    assert torch.allclose(oracle, X, rtol=1e-13, atol=1e-15)


@pytest.mark.mpi(min_size=2)
def test_easgd_warns_outside_the_stability_region():
    comm = MPI.COMM_WORLD
    model = regression_model(x0())
    with pytest.warns(UserWarning, match="stability region"):
        mpisgd.build("easgd", model, torch.optim.SGD(model.parameters(), lr=2.5), comm=comm)
    with pytest.warns(UserWarning, match="overshoots"):
        mpisgd.build("easgd", model, torch.optim.SGD(model.parameters(), lr=0.1), comm=comm,
                     alpha=2.0 / (comm.size + 1))


@pytest.mark.parametrize("options, message", [
    ({"alpha": 1.5}, "alpha must be in"),
    ({"center": "dedicated"}, "center must be one of replicated, rank0"),
    ({"tau": 0}, "tau must be a positive integer"),
    ({"center": "rank0", "compress": "int8"}, "compress needs center replicated"),
])
def test_easgd_bad_options(options, message):
    model = regression_model(x0())
    with pytest.raises(ValueError, match=message):
        mpisgd.build("easgd", model, torch.optim.SGD(model.parameters(), lr=0.1),
                     comm=MPI.COMM_WORLD, **options)
