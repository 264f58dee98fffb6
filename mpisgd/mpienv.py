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

Environment variables: every ``MPISGD_*`` name is declared once, in
:data:`ENVIRONMENT`, with its values. :func:`setting` reads one when it is
used (importing mpisgd never raises on a bad value) and raises
:class:`~mpisgd.errors.ConfigError` (a ``ValueError``) naming it;
:func:`check_environment` checks them all, and refuses undeclared
``MPISGD_*`` names (a typo would otherwise be ignored), inside the
configuration agreement of ``mpisgd train`` and of :func:`mpisgd.build`, so
a bad value on one rank ends every rank with its message.
"""
from __future__ import annotations

import ctypes
import difflib
import os
from typing import NamedTuple

from ._mpi import MPI
from .errors import ConfigError


class Variable(NamedTuple):
    """An ``MPISGD_*`` environment variable: its values (lower case; ``None``: any text), the
    value when unset or empty, and what reads it."""
    values: tuple[str, ...] | None
    default: str | None
    meaning: str


#: Every ``MPISGD_*`` environment variable mpisgd knows, by name.
ENVIRONMENT = {
    "MPISGD_WAIT": Variable(("auto", "spin", "yield"), "auto",
                            "how waits spend the core (mpisgd.mpienv, above)"),
    "MPISGD_STAGING": Variable(("auto", "always", "never"), "auto",
                               "staging through pinned host memory (mpisgd.mpienv, above)"),
    "MPISGD_CUDA_AWARE": Variable(("1", "0"), None,
                                  "overrides the probe of the MPI's CUDA support (cuda_aware)"),
    "MPISGD_OPS": Variable(("auto", "torch"), "auto",
                           "compiled kernels, or their torch twins everywhere (mpisgd.ops)"),
    "MPISGD_ABORT": Variable(("1", "0"), "1",
                             "0: binding an algorithm installs no abort hook (mpisgd.errors)"),
    "MPISGD_CUDA": Variable(("auto", "1", "0"), "auto", "build time: the CUDA kernels (setup.py)"),
    "MPISGD_MPI": Variable(("auto", "wheel"), "auto",
                           "install time: the MPICH wheel even where mpicc is (Makefile)"),
    "MPISGD_REQUIRE_OPS": Variable(("1", "0"), "1",
                                   "tests: 0 accepts a build without the compiled kernels"),
    "MPISGD_CLUSTER": Variable(None, None, "set by mpisgd cluster: the emulated network in "
                                           "words, for the summary line (mpisgd.emulated)"),
}


def _either(values) -> str:
    return ", ".join(values[:-1]) + f" or {values[-1]}"


def setting(name: str) -> str | None:
    """The value of environment variable ``name`` (a key of :data:`ENVIRONMENT`), stripped
    and in lower case; its default when unset or empty. ``ConfigError`` naming the variable
    and its values unless it is one of them."""
    var = ENVIRONMENT[name]
    raw = os.environ.get(name, "")
    value = raw.strip().lower()
    if not value:
        return var.default
    if var.values is None:
        return raw.strip()
    if value not in var.values:
        raise ConfigError(f"{name} must be {_either(var.values)}, got {raw!r}")
    return value


def check_environment() -> None:
    """Check every ``MPISGD_*`` environment variable: ``ConfigError`` naming the first that
    :data:`ENVIRONMENT` does not declare (and the ones it does) or whose value is bad.

    The training driver calls it before :func:`~mpisgd.errors.agree`, and binding an
    algorithm (:func:`mpisgd.build`) before its first collective but the node layout's
    (an ``MPI_Comm_split_type`` and one small ``allgather``, on every rank alike).
    """
    for name in sorted(k for k in os.environ if k.startswith("MPISGD_")):
        if name not in ENVIRONMENT:
            prefix = len("MPISGD_")         # what follows it tells the names apart
            close = difflib.get_close_matches(name[prefix:], [k[prefix:] for k in ENVIRONMENT], n=1)
            hint = f"did you mean MPISGD_{close[0]}? " if close else ""
            raise ConfigError(f"{name} is not an mpisgd environment variable ({hint}known: "
                              f"{', '.join(ENVIRONMENT)}); unset it")
        setting(name)


#: What a launcher tells each task about the job's size, and the fix when MPI disagrees.
LAUNCHER_SIZES = (
    ("SLURM_STEP_NUM_TASKS", "srun",
     "srun needs the PMI this MPI speaks: --mpi=pmi2 for MPICH (the pip wheel), --mpi=pmix "
     "for Open MPI (srun --mpi=list shows what this Slurm has); or start the ranks with this "
     "MPI's own mpiexec inside the allocation"),
    ("OMPI_COMM_WORLD_SIZE", "Open MPI's mpirun",
     "launch with the mpiexec of the MPI that mpi4py uses"),
    ("PMI_SIZE", "a PMI launcher (MPICH's mpiexec, srun --mpi=pmi2)",
     "launch with the mpiexec of the MPI that mpi4py uses"),
)


def check_launch(world_size: int) -> None:
    """``ConfigError`` when the launcher started several tasks but MPI sees a world of one.

    Each task then trains alone, all writing the same record (srun without the PMI
    the MPI understands; one MPI's mpiexec starting another MPI's program). A world
    of one under a launcher that says N > 1 tasks is only ever that mistake; a
    singleton run outside any launcher, or mpiexec's proxies started by srun (their
    step has one task per node, the world is larger), pass.
    """
    if world_size != 1:
        return
    for var, launcher, fix in LAUNCHER_SIZES:
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 1:
            raise ConfigError(
                f"{launcher} started {value} tasks ({var}={value}) but MPI sees a world of 1 "
                f"({' '.join(mpi_library().split())}): each task would train alone; {fix} "
                f"(with the pip wheel: .venv/bin/mpiexec -n {value})")


def srun_mpi(library: str | None = None) -> str:
    """The ``srun --mpi`` plugin that starts ranks of this MPI: ``pmix`` for Open MPI,
    ``pmi2`` for the MPICH family (MPICH and its pip wheel, MVAPICH, Intel MPI, Cray MPICH).

    Reads the library version only: MPI is not initialised (a login node can ask).
    """
    return "pmix" if "open mpi" in (library or mpi_library()).lower() else "pmi2"


def mpi_library() -> str:
    """The first line of ``MPI_Get_library_version`` (e.g. ``MPICH Version: 5.0.2``)."""
    return MPI.Get_library_version().strip().splitlines()[0].strip()


def _loaded_mpi_libraries() -> list[str]:
    """Paths of the MPI libraries this process has loaded (mpi4py opens them privately):
    ``libmpi*`` and ``libmpich*``, e.g. Cray's ``libmpi_cray.so`` beside its GTL
    ``libmpi_gtl_cuda.so``."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/" in line and "libmpi" in line}
    except OSError:
        return []
    return sorted(p for p in paths if os.path.basename(p).startswith("libmpi"))


def cuda_support() -> tuple[bool | None, str]:
    """What the loaded MPI says of device memory: ``MPIX_Query_cuda_support()`` (MPICH >= 4,
    Open MPI >= 4, Cray MPICH) from whichever loaded MPI library exports it, and that
    library's path; ``(None, "")`` when none does (the MPI says nothing)."""
    for path in _loaded_mpi_libraries():
        try:
            lib = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        query = getattr(lib, "MPIX_Query_cuda_support", None)
        if query is not None:
            query.restype = ctypes.c_int
            return bool(query()), path
    return None, ""


def cuda_aware() -> bool:
    """Whether the MPI library accepts CUDA device pointers.

    ``MPISGD_CUDA_AWARE=1`` or ``0`` overrides; otherwise what :func:`cuda_support` says,
    ``False`` when the MPI says nothing.
    """
    env = setting("MPISGD_CUDA_AWARE")
    if env is not None:
        return env == "1"
    return cuda_support()[0] is True


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
    mode = setting("MPISGD_WAIT")
    if mode != "auto":
        return mode == "yield"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return local_ranks() > (cores or 1)


def staging_mode(staging: str | None = None) -> str:
    """``staging`` (``ValueError`` naming it unless a known mode), else ``MPISGD_STAGING``
    (:func:`setting`)."""
    if staging is None:
        return setting("MPISGD_STAGING")
    values = ENVIRONMENT["MPISGD_STAGING"].values
    if staging not in values:
        raise ValueError(f"staging must be {_either(values)}, got {staging!r}")
    return staging
