"""local (PR-SGD): against the dense oracle A(tau, J, 0) and against sync.

float64 throughout; the tolerance covers summation order only (see test_sync).
"""
import contextlib

import pytest
import torch
import torch.nn.functional as F
from mpi4py import MPI

import mpisgd
from mpisgd import reference
import expected_w
from helpers import (ATOL, D, RTOL, classifier, classifier_batch, regression_grad, regression_loss,
                     regression_model, regression_run)

ETA = 0.05


def x0():
    return torch.linspace(-1.0, 1.0, D, dtype=torch.float64)


def run_local(steps, comm=MPI.COMM_WORLD, **options):
    return regression_run("local", x0(), steps, comm, ETA, **options)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("tau", [2, 5])
def test_local_equals_reference_periodic_averaging(comm, tau):
    size, rank = comm.size, comm.rank
    steps = 3 * tau + 1                    # ends between two rounds
    algo, trace = run_local(steps, comm, tau=tau)
    _, oracle = reference.cooperative(x0(), regression_grad, ETA,
                                      expected_w.average(size), steps, tau=tau, trace=True)
    for k in range(steps):                 # every iterate of this worker's column
        assert torch.allclose(trace[k], oracle[k][:, rank], rtol=RTOL, atol=ATOL), k
    assert algo.rounds == steps // tau
    assert torch.allclose(algo.consensus(), oracle[-1].mean(1), rtol=RTOL, atol=ATOL)
    algo.finish()                          # the final round: every worker holds the average
    assert algo.rounds == steps // tau + 1
    assert torch.allclose(algo.flat.data, oracle[-1].mean(1), rtol=RTOL, atol=ATOL)


@pytest.mark.mpi(min_size=2)
def test_time_varying_equals_reference(comm):
    """PR-SGD Algorithm 2 with tau = 2: K_s = ceil(2 s^(1/3)) = 2, 3, 3, 4, 4, 4, ...

    The epoch ends and rates are written out here, not taken from the
    schedule under test.
    """
    size, rank = comm.size, comm.rank
    ends = [2, 5, 8, 12, 16, 20]
    epoch = [next(s for s, e in enumerate(ends, 1) if k + 1 <= e) for k in range(20)]
    algo, trace = run_local(20, comm, tau=2, schedule="time-varying")
    _, oracle = reference.cooperative(
        x0(), regression_grad, lambda k: ETA * epoch[k] ** (-2 / 3),
        expected_w.average(size), 20, communicate=lambda k1: k1 in ends, trace=True)
    for k in range(20):
        assert torch.allclose(trace[k], oracle[k][:, rank], rtol=RTOL, atol=ATOL), k
    assert algo.rounds == len(ends)


@pytest.mark.mpi(min_size=2)
def test_local_tau_one_equals_sync(comm):
    results = []
    for name, opts in (("sync", {}), ("local", {"tau": 1})):
        model = classifier()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        warns = pytest.warns(UserWarning, match="sync") if name == "local" else contextlib.nullcontext()
        with warns:
            algo = mpisgd.build(name, model, opt, comm=comm, **opts)
        for step in range(10):
            x, y = classifier_batch(comm.rank, step)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            algo.step()
        results.append(algo.consensus())
    assert torch.allclose(results[0], results[1], rtol=RTOL, atol=ATOL)


@pytest.mark.mpi(min_size=2)
def test_post_local_is_sync_with_momentum_then_local_sgd(comm):
    """schedule post-local, local_after 4, tau 3, SGD with Nesterov momentum and weight
    decay, each worker's momentum its own: against an oracle written here (each worker's
    steps, the parameters averaged after steps 1-4, 7 and 10); and after step 4 the model is
    mini-batch SGD's on the mean gradient with one momentum (a second oracle)."""
    steps, after, tau, mu, wd = 11, 4, 3, 0.9, 0.01
    model = regression_model(x0())
    opt = torch.optim.SGD(model.parameters(), lr=ETA, momentum=mu, nesterov=True, weight_decay=wd)
    algo = mpisgd.build("local", model, opt, comm=comm, tau=tau, schedule="post-local",
                        local_after=after)
    rounds = []
    for step in range(steps):
        opt.zero_grad()
        regression_loss(model, comm.rank, step).backward()
        algo.step()
        rounds.append(algo.rounds)
        if step + 1 == after:
            switch = model.weight[0].detach().clone()
    x, m = x0().clone(), torch.zeros(D, dtype=torch.float64)       # mini-batch SGD
    for k in range(after):
        g = regression_grad(k, x[:, None].expand(D, comm.size).clone()).mean(1) + wd * x
        m = mu * m + g
        x = x - ETA * (g + mu * m)
    assert torch.allclose(switch, x, rtol=1e-10, atol=1e-12)
    xs = [x0().clone() for _ in range(comm.size)]                   # post-local SGD
    ms = [torch.zeros(D, dtype=torch.float64) for _ in range(comm.size)]
    for k in range(steps):
        for i in range(comm.size):
            g = regression_grad(k, xs[i][:, None].expand(D, comm.size).clone())[:, i] + wd * xs[i]
            ms[i] = mu * ms[i] + g
            xs[i] = xs[i] - ETA * (g + mu * ms[i])
        if k + 1 <= after or (k + 1 - after) % tau == 0:
            mean = torch.stack(xs).mean(0)
            xs = [mean.clone() for _ in xs]
    assert rounds == [1, 2, 3, 4, 4, 4, 5, 5, 5, 6, 6]
    assert torch.allclose(model.weight[0].detach(), xs[comm.rank], rtol=1e-10, atol=1e-12)


def momentum_after_round(policy, comm=MPI.COMM_WORLD, steps=3):
    model = regression_model(x0())
    opt = torch.optim.SGD(model.parameters(), lr=ETA, momentum=0.9)
    algo = mpisgd.build("local", model, opt, comm=comm, tau=3, momentum_policy=policy)
    for step in range(steps):
        opt.zero_grad()
        regression_loss(model, comm.rank, step).backward()
        algo.step()
    return opt.state[model.weight]["momentum_buffer"].reshape(-1).clone()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("policy", ["average", "reset"])
def test_momentum_policy(comm, policy):
    if comm.size == 1:
        pytest.skip("one worker: the test needs two workers whose momenta differ")
    local = comm.allgather(momentum_after_round("local", comm))
    assert not torch.equal(local[0], local[1])            # workers' momenta differ
    buf = momentum_after_round(policy, comm)
    if policy == "reset":
        assert torch.count_nonzero(buf) == 0
    else:
        assert torch.allclose(buf, torch.stack(local).mean(0), rtol=1e-12, atol=1e-15)


@pytest.mark.mpi(min_size=2)
def test_momentum_average_when_a_rank_lacks_state():
    """A parameter with no gradient on rank 0 has no momentum there: the layout is the union."""
    comm = MPI.COMM_WORLD
    model = torch.nn.ModuleDict({"a": torch.nn.Linear(3, 1), "b": torch.nn.Linear(3, 1)}).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.warns(UserWarning, match="tau = 1"):
        algo = mpisgd.build("local", model, opt, comm=comm, tau=1, momentum_policy="average")
    x = torch.ones(2, 3, dtype=torch.float64)
    opt.zero_grad(set_to_none=True)
    out = model["a"](x).sum() + (model["b"](x).sum() if comm.rank != 0 else 0.0)
    out.backward()
    algo.step()
    has_b = "momentum_buffer" in opt.state[model["b"].weight]
    assert has_b == (comm.rank != 0)
    weights = comm.allgather(model["b"].weight.detach().clone())
    assert all(torch.equal(w, weights[0]) for w in weights)


@pytest.mark.mpi(min_size=2)
def test_batchnorm_buffers_averaged_each_round():
    comm = MPI.COMM_WORLD
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    algo = mpisgd.build("local", model, opt, comm=comm, tau=2)
    for step in range(2):
        x, _ = classifier_batch(comm.rank, step)
        opt.zero_grad()
        model(x).sum().backward()
        algo.step()
    stats = comm.allgather(model[1].running_mean.clone())
    assert all(torch.equal(s, stats[0]) for s in stats)


@pytest.mark.mpi(min_size=2)
def test_steps_after_finish_are_averaged_again():
    comm = MPI.COMM_WORLD
    algo, _ = run_local(3, tau=2)
    algo.finish()
    model = algo.model
    regression_loss(model, comm.rank, 3).backward()
    algo.step()                              # a local step after finish: replicas differ
    everyone = comm.allgather(algo.consensus())
    assert all(torch.equal(t, everyone[0]) for t in everyone)
