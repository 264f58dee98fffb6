"""Which MPI operations take device buffers: the start-up probe of a CUDA-aware MPI.

A CUDA-aware MPI need not take device buffers in every operation (Open MPI's
CUDA support covers the blocking collectives, not ``MPI_Iallreduce``,
``MPI_Ialltoall``, ``MPI_Iallgather`` or ``MPI_Ibcast``). :func:`probe` tries,
at start, each operation training hands device buffers to
(:data:`DEVICE_OPS`) through a :class:`~mpisgd.comm.Comm`, and the ``Comm``
stages those that fail through host memory (:mod:`mpisgd.staging`).
"""
from __future__ import annotations

import warnings

import torch

from ._mpi import MPI
from .errors import ConfigError
from .mpienv import cuda_support, mpi_library, setting

#: The MPI operations training hands tensors to (``p2p``: Isend, Irecv and the persistent
#: requests of gossip); a CUDA-aware MPI's support is probed per operation.
DEVICE_OPS = ("Allreduce", "Iallreduce", "Ibcast", "Ireduce", "Iallgather", "Ialltoall",
              "Ineighbor_allgather", "p2p", "Iallgatherv", "Ireduce_scatter")


def probe(comm, device) -> frozenset:
    """Start-up test of the operations training hands device buffers to; collective.

    Runs only for a CUDA ``device`` with ``staging`` not ``"always"``. When the MPI
    cannot read device memory (``MPIX_Query_cuda_support()`` says 0, or the MPI says
    nothing and ``MPISGD_CUDA_AWARE`` is not 1) nothing is tried: ``auto`` stages
    every operation, and ``MPISGD_STAGING=never`` or ``MPISGD_CUDA_AWARE=1`` against
    the query is refused (``ConfigError``, one line, every rank) instead of crashing
    inside MPI at the first step. Otherwise every rank runs each of
    :data:`DEVICE_OPS` once on a small device tensor and checks the result; an
    operation that fails on any rank is staged through host memory (``auto``, with a
    warning naming it) or refused (``never``). Returns ``comm.device_ops``.

    An algorithm probes its ``Comm`` when it is built on a CUDA model; a ``Comm`` made
    directly trusts the library's word for every operation until this is called.
    A probe that fails on some ranks only may leave the others waiting in it (the
    abort hook ends the job if the failing rank raises).
    """
    if torch.device(device).type != "cuda" or comm.staging == "always":
        return comm.device_ops
    said, library = cuda_support()
    name = f"{mpi_library()} ({library or 'no MPIX_Query_cuda_support'})"
    if setting("MPISGD_CUDA_AWARE") == "1" and said is False:
        _refuse(comm, f"MPISGD_CUDA_AWARE=1, but this MPI says it cannot read device "
                     f"memory in this run (MPIX_Query_cuda_support() = 0 in {name}): "
                     "unset it, or enable the MPI's GPU support (MPICH: "
                     "MPIR_CVAR_ENABLE_GPU=1; Open MPI: a build with CUDA)")
    if not comm.cuda_aware:
        if comm.staging == "never":
            why = ("MPISGD_CUDA_AWARE=0 says so" if setting("MPISGD_CUDA_AWARE") == "0" else
                   "MPIX_Query_cuda_support() = 0" if said is False else
                   "no MPIX_Query_cuda_support; set MPISGD_CUDA_AWARE=1 if it can")
            _refuse(comm, f"MPISGD_STAGING=never, but this MPI cannot read device memory "
                         f"({name}: {why}): unset MPISGD_STAGING to stage through host "
                         "memory, or use a CUDA-aware MPI")
        return comm.device_ops
    passed, first = [], None
    probe = comm.sibling()              # uncounted; every operation on device buffers
    probe.device_ops = frozenset(DEVICE_OPS)
    for op in DEVICE_OPS:
        try:
            passed.append(int(works(probe, op, device)))
        except Exception as err:        # noqa: BLE001 - any failure means: do not trust it
            passed.append(0)
            first = first or f"{op}: {type(err).__name__}: {err}"
    if comm.size > 1:               # an operation counts if it passed on every rank
        votes = torch.tensor(passed, dtype=torch.int32)
        comm.mpi.Allreduce(MPI.IN_PLACE, comm.spec(votes), op=MPI.MIN)
        passed = votes.tolist()
    failed = [op for op, ok in zip(DEVICE_OPS, passed) if not ok]
    if failed and comm.staging == "never":
        _refuse(comm, f"MPISGD_STAGING=never, but this MPI ({name}) failed "
                     f"{', '.join(failed)} on device buffers at start: unset "
                     "MPISGD_STAGING to stage those through host memory")
    if failed:
        warnings.warn(f"the MPI library claims CUDA support but failed {', '.join(failed)} "
                      "on device buffers at start" + (f" ({first})" if first else "")
                      + "; those go through host memory (MPISGD_CUDA_AWARE=0 stages "
                      "everything and skips the test)", RuntimeWarning)
    comm.device_ops = frozenset(op for op, ok in zip(DEVICE_OPS, passed) if ok)
    return comm.device_ops


def _refuse(comm, message: str) -> None:
    """The same ``ConfigError`` on every rank; rank 0's is the one printed."""
    err = ConfigError(message)
    err.echo = comm.rank != 0
    raise err


def works(comm, op: str, device) -> bool:
    """Run ``op`` once, through this ``Comm``'s own operation, on device buffers (every
    rank alike); whether the result is right. A wrong result is what a library built
    with CUDA support but run without it gives."""
    P, r = comm.size, comm.rank
    x = torch.full((4,), float(r + 1), device=device)
    rows = torch.zeros(P, 4, device=device)
    total = P * (P + 1) / 2
    ranks = torch.arange(1, P + 1, dtype=torch.float32)[:, None].expand(P, 4)
    left, right = (r - 1) % P, (r + 1) % P
    if op == "Allreduce":                       # what allreduce() and blocking rounds use
        if x.is_cuda:
            torch.cuda.current_stream(x.device).synchronize()
        comm.mpi.Allreduce(MPI.IN_PLACE, comm.spec(x))
        return bool((x.cpu() == total).all())
    if op == "Iallreduce":
        comm.iallreduce(x).wait()
        return bool((x.cpu() == total).all())
    if op == "Ibcast":
        comm.bcast(x, root=0)
        return bool((x.cpu() == 1.0).all())
    if op == "Ireduce":
        comm.ireduce(x, root=0).wait()
        return r != 0 or bool((x.cpu() == total).all())
    if op == "Iallgather":
        comm.iallgather(x, rows).wait()
        return bool((rows.cpu() == ranks).all())
    if op == "Ialltoall":
        comm.ialltoall(torch.full((P, 4), float(r + 1), device=device), rows).wait()
        return bool((rows.cpu() == ranks).all())
    if op == "Iallgatherv":                     # the groups' all-gather of blocks
        rows[r] = float(r + 1)
        comm.iallgatherv(rows.view(-1), [4] * P).wait()
        return bool((rows.cpu() == ranks).all())
    if op == "Ireduce_scatter":                 # the groups' two-level gradient mean
        comm.ireduce_scatter(torch.full((P * 4,), float(r + 1), device=device), x,
                             [4] * P).wait()
        return bool((x.cpu() == total).all())
    got = torch.zeros(1, 4, device=device)
    if op == "p2p":
        received = comm.irecv(got[0], left, 77)
        comm.isend(x, right, 77).wait()
        received.wait()
    else:                                       # Ineighbor_allgather, on a ring
        ring = comm.mpi.Create_dist_graph_adjacent([left], [right])
        try:
            comm.ineighbor_allgather(ring, x, got).wait()
        finally:
            ring.Free()
    return bool((got.cpu() == float(left + 1)).all())


def path(comm, device) -> str:
    """How device tensors reach MPI, for the summary line: ``"device buffers"``,
    ``"host staging"``, or device buffers with the operations staged named; ``""`` on
    the CPU."""
    if torch.device(device).type != "cuda":
        return ""
    if comm.staging == "always" or not comm.device_ops:
        return "host staging"
    staged = [op for op in DEVICE_OPS if op not in comm.device_ops]
    return "device buffers" + (f" (host staging for {', '.join(staged)})" if staged else "")
