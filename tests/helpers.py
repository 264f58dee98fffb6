"""Deterministic problems shared by the unit and MPI tests."""
from __future__ import annotations

import os
import shutil
import sys

import torch

D, N = 6, 8          # regression dimension, samples per worker batch

#: float64 runs against the oracle or each other: the same sums in other orders cost a few
#: ulps per step (docs/testing.md, Tolerances); a real defect shows at 1e-3 or more.
RTOL, ATOL = 1e-12, 1e-14


def regression_batch(worker: int, step: int, d: int = D, n: int = N):
    """The (A, b) a worker sees at a step: a function of (worker, step) only."""
    g = torch.Generator().manual_seed(1_000_003 * (worker + 1) + step)
    A = torch.randn(n, d, generator=g, dtype=torch.float64)
    b = torch.randn(n, generator=g, dtype=torch.float64)
    return A, b


def regression_grad(k: int, X: torch.Tensor) -> torch.Tensor:
    """Columns of gradients of 0.5 mean((A x - b)^2) for every worker: the oracle's G_k."""
    cols = []
    for i in range(X.shape[1]):
        A, b = regression_batch(i, k, X.shape[0])
        cols.append(A.T @ (A @ X[:, i] - b) / A.shape[0])
    return torch.stack(cols, 1)


def regression_model(x0: torch.Tensor) -> torch.nn.Module:
    model = torch.nn.Linear(len(x0), 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(x0[None, :])
    return model


def regression_loss(model, worker: int, step: int):
    A, b = regression_batch(worker, step, model.weight.shape[1])
    return 0.5 * ((model(A).squeeze(1) - b) ** 2).mean()


def regression_run(name: str, x0: torch.Tensor, steps: int, comm, eta: float, **options):
    """Algorithm ``name`` on the regression problem from ``x0``, ``steps`` steps (loss of
    worker ``comm.rank``); returns it and the trace of this worker's parameters after each step."""
    import mpisgd
    model = regression_model(x0)
    opt = torch.optim.SGD(model.parameters(), lr=eta)
    algo = mpisgd.build(name, model, opt, comm=comm, **options)
    trace = []
    for step in range(steps):
        opt.zero_grad()
        regression_loss(model, comm.rank, step).backward()
        algo.step()
        trace.append(algo.flat.data.clone())
    return algo, trace


def centered_trace(algo, model, opt, steps: int) -> list:
    """A centre-rank algorithm on the regression problem (every worker sees worker 0's
    batches): the centre serves; a worker steps ``steps`` times, then finishes. Returns
    the worker's parameters after each step (nothing on the centre)."""
    ys = []
    if not algo.is_worker:
        algo.serve()
        return ys
    for step in range(steps):
        opt.zero_grad()
        regression_loss(model, 0, step).backward()
        algo.step()
        ys.append(algo.flat.data.clone())
    algo.finish()
    return ys


def classifier_batch(worker: int, step: int, n: int = 5):
    g = torch.Generator().manual_seed(7919 * (worker + 1) + step)
    return (torch.randn(n, 4, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (n,), generator=g))


def classifier(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 7), torch.nn.Tanh(),
                               torch.nn.Linear(7, 3)).double()


def classifier_trace(name, comm, steps=8, momentum=0.0, lr=0.1, **options):
    """Algorithm ``name`` on the classifier, ``steps`` steps of SGD at ``lr`` on ``comm``;
    returns this rank's parameters after each step and the algorithm (finished)."""
    import mpisgd
    model = classifier()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    algo = mpisgd.build(name, model, opt, comm=comm, **options)
    out = []
    for step in range(steps):
        x, y = classifier_batch(comm.rank, step)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        algo.step()
        out.append(algo.flat.data.clone())
    algo.finish()
    return out, algo


def mpiexec() -> list[str]:
    """The launcher beside this Python (the MPICH wheel's), else the one on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    exe = here if os.path.exists(here) else shutil.which("mpiexec")
    cmd = [exe]
    if "Open MPI" in os.popen(f"{exe} --version 2>&1").read():
        cmd += ["--allow-run-as-root", "--oversubscribe"]
    return cmd


def train_record(shared_dir, name, **flags):
    """One run of the driver on every rank (one thread each) into ``shared_dir/name.h5``;
    (the record's path, the summary) once every rank is done."""
    from mpi4py import MPI
    from mpisgd.app import train
    from mpisgd.app.config import from_sources
    out = os.path.join(shared_dir, f"{name}.h5")
    summary = train.run(from_sources(None, dict(out=out, threads=1, **flags)), MPI.COMM_WORLD,
                        quiet=True)
    MPI.COMM_WORLD.Barrier()
    return out, summary
