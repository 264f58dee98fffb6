"""The outer optimizer (--outer): DiLoCo and SlowMo on every parameter-averaging family.

* outer SGD at lr 1 without momentum is the plain algorithm (local, easgd on either
  centre, gossip with and without overlap, cooperative with an auxiliary variable,
  the async centre);
* DiLoCo (local + Nesterov outer), Adam and heavy-ball outer steps match the oracle's
  outer step (reference.cooperative(outer=...), written out there) at every step;
* the outer state continues across a checkpoint.

float64 throughout: the tolerance covers summation order only.
"""
import pytest
import torch
from mpi4py import MPI

from mpisgd import reference
import expected_w
from helpers import ATOL, D, RTOL, centered_trace, regression_batch, regression_grad, \
    regression_loss, regression_run
from test_async_center import build as build_centered, pair_or_self

ETA = 0.05
PLAIN = {"outer": "sgd", "outer_lr": 1.0, "outer_momentum": 0.0}
DILOCO = {"outer": "nesterov", "outer_lr": 0.7, "outer_momentum": 0.9}


def x0():
    return torch.linspace(-1.0, 1.0, D, dtype=torch.float64)


def run(name, steps, comm, **options):
    return regression_run(name, x0(), steps, comm, ETA, **options)


FAMILIES = [
    ("local", {"tau": 3}),
    ("local", {"tau": 2, "schedule": "time-varying"}),
    ("easgd", {"tau": 2, "center": "replicated"}),
    ("easgd", {"tau": 2, "center": "rank0"}),
    ("gossip", {"tau": 2, "topology": "ring"}),
    ("gossip", {"tau": 1, "topology": "exponential", "overlap": True}),
    ("cooperative", {"tau": 2, "topology": "easgd"}),
]


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("name, options", FAMILIES)
def test_outer_sgd_lr_one_is_the_plain_algorithm(comm, name, options):
    steps = 9
    plain, want = run(name, steps, comm, **options)
    outer, got = run(name, steps, comm, **options, **PLAIN)
    assert outer.outer is not None or (name == "easgd" and comm.rank != 0)
    for k in range(steps):
        assert torch.allclose(got[k], want[k], rtol=RTOL, atol=ATOL), k
    assert torch.allclose(outer.consensus(), plain.consensus(), rtol=RTOL, atol=ATOL)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("outer", [DILOCO, {"outer": "sgd", "outer_lr": 0.8, "outer_momentum": 0.5},
                                   {"outer": "adam", "outer_lr": 0.01, "outer_momentum": 0.9}])
@pytest.mark.parametrize("tau", [1, 4])
def test_local_with_an_outer_step_equals_the_oracle(comm, outer, tau):
    """DiLoCo (Nesterov outer), SlowMo (heavy ball) and an Adam outer: every iterate."""
    steps = 3 * tau + 1
    algo, trace = run("local", steps, comm, tau=tau, **outer)
    spec = (outer["outer"], outer["outer_lr"], outer["outer_momentum"])
    _, oracle = reference.cooperative(x0(), regression_grad, ETA,
                                      expected_w.average(comm.size), steps, tau=tau,
                                      trace=True, outer=spec)
    for k in range(steps):
        assert torch.allclose(trace[k], oracle[k][:, comm.rank], rtol=RTOL, atol=ATOL), k
    algo.finish()                     # the last, partial round steps the anchor too
    final = reference.cooperative(x0(), regression_grad, ETA,
                                  expected_w.average(comm.size), steps,
                                  communicate=lambda k1: k1 % tau == 0 or k1 == steps,
                                  outer=spec)
    assert torch.allclose(algo.flat.data, final[:, comm.rank], rtol=RTOL, atol=ATOL)


@pytest.mark.mpi(min_size=4)
def test_gossip_with_a_nesterov_outer_equals_the_oracle(comm):
    """Each worker's own anchor and momentum: D_i = x_i,anchor - sum_j W_ij x_j."""
    steps, tau = 7, 2
    algo, trace = run("gossip", steps, comm, tau=tau, topology="ring", **DILOCO)
    n = comm.size
    W = expected_w.metropolis(n, expected_w.edges("ring", n)).T
    _, oracle = reference.cooperative(x0(), regression_grad, ETA, W, steps, tau=tau, trace=True,
                                      outer=("nesterov", 0.7, 0.9))
    for k in range(steps):
        assert torch.allclose(trace[k], oracle[k][:, comm.rank], rtol=RTOL, atol=ATOL), k


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("center", ["replicated", "rank0"])
def test_easgd_outer_steps_the_centre(comm, center):
    """The simultaneous oracle with the outer step on the centre column only."""
    steps, tau, alpha = 7, 2, 0.2
    algo, trace = run("easgd", steps, comm, tau=tau, alpha=alpha, center=center, **DILOCO)
    m = comm.size
    X, oracle = reference.cooperative(x0(), regression_grad, ETA,
                                      expected_w.w_alpha(m, alpha), steps, tau=tau, v=1,
                                      trace=True, simultaneous=True, outer=("nesterov", 0.7, 0.9),
                                      outer_columns=slice(m, m + 1))
    for k in range(steps):
        assert torch.allclose(trace[k], oracle[k][:, comm.rank], rtol=RTOL, atol=ATOL), k
    assert torch.allclose(algo.consensus(), X[:, m], rtol=RTOL, atol=ATOL)


def centered(name, comm, steps, tau, **options):
    algo, model, opt = build_centered(name, comm, tau=tau, **options)
    ys = centered_trace(algo, model, opt, steps)
    return ys, algo.consensus()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("center", ["dedicated", "rank0"])
@pytest.mark.parametrize("name", ["async-easgd", "eamsgd", "downpour"])
def test_centre_outer_sgd_lr_one_is_plain(name, center):
    comm = pair_or_self(center)
    if comm == MPI.COMM_NULL:
        return
    extra = {"alpha": 0.3} if name != "downpour" else {}
    want, c_want = centered(name, comm, 7, 2, center=center, **extra)
    got, c_got = centered(name, comm, 7, 2, center=center, **extra, **PLAIN)
    comm.Free()
    assert torch.equal(c_got, c_want)                 # c - (-delta) is c + delta, bitwise
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("center", ["dedicated", "rank0"])
def test_async_easgd_centre_nesterov_equals_the_rule(center):
    """One worker: each push e becomes c <- c - lr (D + mu b), b <- mu b + D, D = -e."""
    comm = pair_or_self(center)
    if comm == MPI.COMM_NULL:
        return
    steps, tau, alpha = 7, 2, 0.3
    got, c_got = centered("async-easgd", comm, steps, tau, center=center, alpha=alpha, **DILOCO)
    comm.Free()
    x, c, b = x0(), x0(), torch.zeros(D, dtype=torch.float64)
    want = []
    for k in range(1, steps + 1):
        A, y = regression_batch(0, k - 1)
        g = A.T @ (A @ x - y) / A.shape[0]
        if k % tau == 0:
            e = alpha * (x - c)
            x = x - e
            b = 0.9 * b - e
            c = c - 0.7 * (-e + 0.9 * b)
        x = x - ETA * g
        want.append(x)
    for k, y in enumerate(got):                       # the worker's iterates (none on a server)
        assert torch.allclose(y, want[k], rtol=RTOL, atol=ATOL), k
    assert torch.allclose(c_got, c, rtol=RTOL, atol=ATOL)


@pytest.mark.mpi(min_size=2)
def test_outer_state_continues_across_a_checkpoint(comm):
    """Stop after 5 steps (mid-round), load state into a fresh run: 11 steps as one run."""
    steps, stop = 11, 5
    _, want = run("local", steps, comm, tau=3, **DILOCO)
    first, _ = run("local", stop, comm, tau=3, **DILOCO)
    state = first.state_dict()
    assert state["outer"]["optimizer"]["state"]     # the momentum buffer travels
    second, _ = run("local", 0, comm, tau=3, **DILOCO)
    second.load_state_dict(state)
    model, opt = second.model, second.optimizer
    for step in range(stop, steps):
        opt.zero_grad()
        regression_loss(model, comm.rank, step).backward()
        second.step()
        assert torch.allclose(second.flat.data, want[step], rtol=RTOL, atol=ATOL), step
