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

The package face is lazy (PEP 562): ``import mpisgd`` and ``import
mpisgd.topology`` load neither the algorithms nor ``mpi4py.MPI`` (which
calls ``MPI_Init``, forbidden on many login nodes); ``mpisgd.build`` and
``mpisgd.ALGORITHMS`` import the algorithms when first read.

``mpisgd.spec(name, **options)`` validates options without a model or MPI
(``OptionError`` names a bad one); ``spec.bind(model, opt, comm)`` makes the
algorithm, and ``build`` does both.
"""
__version__ = "0.2.0"      # the one place: pyproject.toml reads it from here
__all__ = ["build", "spec", "ALGORITHMS", "__version__"]

_LAZY = ("build", "spec", "ALGORITHMS")


def __getattr__(name: str):
    if name in _LAZY:
        from . import algorithms
        return getattr(algorithms, name)
    raise AttributeError(f"module 'mpisgd' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
