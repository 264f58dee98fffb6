"""``MPI``: the ``mpi4py.MPI`` module, imported on its first use.

Importing ``mpi4py.MPI`` loads the MPI library and calls ``MPI_Init``, which
fails or is forbidden on many login nodes. Library modules therefore name
``MPI`` through this stand-in: ``import mpisgd.<anything>``, ``mpisgd
report``, ``mpisgd topology`` and ``--help`` load no MPI, and the first
attribute read (``MPI.COMM_WORLD`` in a training run) imports it. Each
attribute is looked up once; later reads are plain instance attributes.
"""
from __future__ import annotations


class _LazyMPI:
    """Attribute access to ``mpi4py.MPI``, importing it on the first read."""

    def __getattr__(self, name: str):
        from mpi4py import MPI as module
        value = getattr(module, name)
        setattr(self, name, value)       # the next read skips __getattr__
        return value

    def __repr__(self) -> str:
        return "<mpi4py.MPI, imported on first use>"


MPI = _LazyMPI()


def idle_barrier(comm, poll: float = 1e-3) -> None:
    """A barrier that sleeps while it waits (``Ibarrier``, tested every ``poll`` seconds).

    For ranks that sit out what others do (a study's task on fewer ranks, a
    calibration's ping-pong): MPI's own Barrier spins, taking a core from the
    ranks at work on an oversubscribed node.
    """
    import time
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(poll)
