"""Adam and AdamW as the local optimizer, under mpiexec: sync equals one AdamW on the mean
gradient (an oracle written here), local SGD's average policy averages Adam's moments, and
the servers of the parameter-server family step with Adam."""
import pytest
import torch
from mpi4py import MPI

import mpisgd
from helpers import D, regression_batch, regression_model

STEPS, LR = 6, 0.05


def x0():
    return torch.linspace(-1.0, 1.0, D, dtype=torch.float64)


def train(name, comm, optimizer, **options):
    model = regression_model(x0())
    opt = optimizer(model.parameters())
    algo = mpisgd.build(name, model, opt, comm=comm, **options)
    w = algo.worker_index if algo.is_worker else None
    for step in range(STEPS):
        if algo.is_worker:
            opt.zero_grad()
            A, b = regression_batch(w, step)
            (0.5 * (A @ model.weight[0] - b).square().mean()).backward()
            algo.step()
        else:
            algo.serve()
            break
    algo.finish()
    return algo, model, opt


def adamw(params):
    return torch.optim.AdamW(params, lr=LR, betas=(0.8, 0.95), weight_decay=0.1)


@pytest.mark.mpi(min_size=2)
def test_sync_with_adamw_is_one_adamw_on_the_mean_gradient(comm):
    algo, model, _ = train("sync", comm, adamw)
    x = x0().clone().requires_grad_(True)          # the oracle: one process, every worker's data
    ref = adamw([x])
    for step in range(STEPS):
        grads = []
        for w in range(comm.size):
            A, b = regression_batch(w, step)
            grads.append(A.T @ (A @ x.detach() - b) / A.shape[0])
        x.grad = torch.stack(grads).mean(0)
        ref.step()
    torch.testing.assert_close(model.weight[0].detach(), x.detach(), rtol=1e-12, atol=1e-14)
    algo.close()


@pytest.mark.mpi(min_size=2)
def test_local_averages_adams_moments_with_the_average_policy():
    comm = MPI.COMM_WORLD
    algo, _, opt = train("local", comm, adamw, tau=3, momentum_policy="average")
    state = opt.state[next(iter(opt.state))]
    for key in ("exp_avg", "exp_avg_sq"):
        mine = state[key].clone()
        assert all(torch.equal(t, mine) for t in comm.allgather(mine)), key
    kept, _, opt2 = train("local", comm, adamw, tau=3)         # local: each keeps its own
    other = opt2.state[next(iter(opt2.state))]["exp_avg"]
    assert not all(torch.equal(t, other) for t in comm.allgather(other.clone()))
    algo.close()
    kept.close()


@pytest.mark.mpi(min_size=3)
def test_the_servers_step_with_adam():
    comm = MPI.COMM_WORLD
    algo, model, _ = train("ps-sync", comm, lambda p: torch.optim.Adam(p, lr=LR))
    if not algo.is_worker:
        assert isinstance(algo.server.optimizer, torch.optim.Adam)
    finals = comm.allgather(model.weight.detach().clone() if algo.is_worker else None)
    workers = [f for f in finals if f is not None]
    assert all(torch.equal(f, workers[0]) for f in workers)
    assert not torch.equal(workers[0][0], x0())                 # it moved
    algo.close()
