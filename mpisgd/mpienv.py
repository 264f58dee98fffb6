"""What the MPI environment is: the library, CUDA support, ranks per node, wait and staging modes.

Probing only, no communication (except where a function says so), and no
tensor code: :mod:`mpisgd.comm` reads these to decide how to hand buffers
to MPI and how to wait.

Waiting: MPICH and Open MPI spin while they wait. When a node runs more
ranks than it has cores (``MPISGD_WAIT=auto``, the default, decides from the
launcher's local rank count), a spinning rank steals the core of a rank that
is still computing; there ``Handle.wait`` polls ``MPI_Testall`` and yields
the core between polls (``sched_yield``), and blocking collectives become
nonblocking ones waited that way. ``MPISGD_WAIT=spin`` or ``yield`` forces
either.

Staging: ``MPISGD_STAGING=auto`` (stage CUDA tensors through pinned host
memory when the MPI is not CUDA-aware), ``always`` (every tensor, CPU too:
how the tests exercise the path without a GPU) or ``never``.
"""
from __future__ import annotations

import ctypes
import os

from ._mpi import MPI


def mpi_library() -> str:
    """The first line of ``MPI_Get_library_version`` (e.g. ``MPICH Version: 5.0.2``)."""
    return MPI.Get_library_version().strip().splitlines()[0].strip()


def _loaded_libmpi():
    """The MPI library this process has loaded (mpi4py opens it privately), or ``None``."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libmpi" in line and "/" in line}
    except OSError:
        paths = set()
    for path in sorted(paths, key=len):
        if os.path.basename(path).startswith(("libmpi.so", "libmpi_")):
            try:
                return ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_GLOBAL)
            except OSError:
                continue
    return None


def cuda_aware() -> bool:
    """Whether the MPI library accepts CUDA device pointers.

    ``MPISGD_CUDA_AWARE=1`` or ``0`` overrides; otherwise asks the loaded
    library's ``MPIX_Query_cuda_support()`` (MPICH >= 4, Open MPI >= 4), and
    answers ``False`` when it has none.
    """
    env = os.environ.get("MPISGD_CUDA_AWARE")
    if env is not None:
        return env.strip().lower() in ("1", "true", "yes", "on")
    lib = _loaded_libmpi()
    query = getattr(lib, "MPIX_Query_cuda_support", None) if lib is not None else None
    if query is None:
        return False
    query.restype = ctypes.c_int
    return bool(query())


def local_ranks() -> int:
    """Ranks on this node, as the launcher tells (MPICH, Open MPI, Slurm); 1 if unknown."""
    for var in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_STEP_TASKS_PER_NODE"):
        value = os.environ.get(var, "")
        digits = value[:len(value) - len(value.lstrip("0123456789"))]
        if digits:
            return int(digits)
    return 1


def yield_when_waiting() -> bool:
    """Whether waits should yield the core: ``MPISGD_WAIT``, else oversubscription."""
    mode = os.environ.get("MPISGD_WAIT", "auto").strip().lower()
    if mode not in ("auto", "spin", "yield"):
        raise ValueError(f"MPISGD_WAIT must be auto, spin or yield, got {mode!r}")
    if mode != "auto":
        return mode == "yield"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return local_ranks() > (cores or 1)


def staging_mode(staging: str | None = None, name: str = "staging") -> str:
    """``staging``, else ``MPISGD_STAGING``, else ``"auto"``; ``ValueError`` naming ``name``
    unless it is a known mode."""
    mode = staging or os.environ.get("MPISGD_STAGING", "auto")
    if mode not in ("auto", "always", "never"):
        raise ValueError(f"{name} must be auto, always or never, got {mode!r}")
    return mode


def check_environment() -> None:
    """``ValueError`` naming a bad ``MPISGD_WAIT`` or ``MPISGD_STAGING`` value."""
    yield_when_waiting()
    staging_mode(name="MPISGD_STAGING")
