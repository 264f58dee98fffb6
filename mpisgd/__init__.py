"""mpisgd: communication-efficient distributed SGD on MPI, one replica per rank.

Example (run under ``mpiexec -n 4 python train.py``)::

    from mpi4py import MPI
    import torch, mpisgd

    model = torch.nn.Linear(10, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    algo = mpisgd.build("local", model, opt, comm=MPI.COMM_WORLD, tau=4)
    for step in range(100):
        x, y = torch.randn(32, 10), torch.randint(0, 2, (32,))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        algo.step()
    algo.finish()
    theta = algo.consensus()     # the averaged model, the same on every rank
"""
from .algorithms import ALGORITHMS, build

__version__ = "0.1.0"
__all__ = ["build", "ALGORITHMS", "__version__"]
