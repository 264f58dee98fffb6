"""Shared pieces of the benchmark scripts: interleaved timing and a gloo process group.

Every benchmark measures its contenders side by side in one run, alternating
them trial by trial, and reports medians and their ratio: on a shared
machine absolute times drift, ratios measured this way hold.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import time

import torch
from mpi4py import MPI

from mpisgd._mpi import idle_barrier  # noqa: F401  (a barrier that sleeps; the scripts use it)


def arguments(doc: str) -> argparse.ArgumentParser:
    """An argument parser whose ``--help`` shows ``doc`` (the script's docstring) as written."""
    return argparse.ArgumentParser(description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def parse(parser: argparse.ArgumentParser, comm=MPI.COMM_WORLD, argv=None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` on every rank; only rank 0 prints ``--help`` and usage errors
    (every rank still exits with argparse's status)."""
    with contextlib.ExitStack() as quiet:
        if comm.rank:
            quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
            quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))
        return parser.parse_args(argv)


def usage_error(parser: argparse.ArgumentParser, message: str, comm=MPI.COMM_WORLD) -> None:
    """``parser.error(message)`` printed by rank 0 only; every rank exits with status 2."""
    if comm.rank == 0:
        parser.error(message)
    raise SystemExit(2)


def count(text: str) -> int:
    """A positive count, also written as a float (``1e6``): for argparse's ``type=``."""
    try:
        value = int(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value < 1 or value != float(text):
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def trials(parser: argparse.ArgumentParser, comm=MPI.COMM_WORLD) -> argparse.Namespace:
    """Add ``--tau``, ``--steps`` (a multiple of tau) and ``--trials``, the options of a
    script that times whole rounds of local SGD beside sync, and parse (:func:`parse`)."""
    parser.add_argument("--tau", type=count, default=8, help="local's period (default 8)")
    parser.add_argument("--steps", type=count, default=16,
                        help="steps per trial, a multiple of --tau (default 16)")
    parser.add_argument("--trials", type=count, default=6,
                        help="timed trials per contender, after 2 warm-up trials (default 6)")
    args = parse(parser, comm)
    if args.steps % args.tau:
        usage_error(parser, f"--steps must be a multiple of --tau ({args.tau})", comm)
    return args


def input_shape(model: str) -> tuple[int, ...]:
    """The synthetic inputs a benchmark feeds ``model``: images for the convolutional ones."""
    return (3, 32, 32) if model in ("cnn", "resnet20") else (64,)


def counts(text: str) -> list[int]:
    """A comma-separated list of :func:`count` (``1e6,1e7``)."""
    return [count(part) for part in text.split(",") if part.strip()]


def interleaved(contenders: dict, trials: int, comm=MPI.COMM_WORLD, warmup: int = 2,
                settle: bool = False) -> dict:
    """Median seconds per call of each ``fn`` (max over ranks per trial), alternating them.

    The order of the contenders is reversed on every other trial. ``settle``:
    each timed call follows an untimed call of the same ``fn``, so that every
    contender is timed in the steady state of a training loop (its own
    memory in cache, as far as it fits) rather than in whatever state the
    previous contender left.
    """
    times = {name: [] for name in contenders}
    order = list(contenders.items())
    for t in range(warmup + trials):
        for name, fn in (order if t % 2 == 0 else order[::-1]):   # no contender always first
            if settle:
                fn()
            comm.Barrier()
            t0 = time.perf_counter()
            fn()
            dt = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
            if t >= warmup:
                times[name].append(dt)
    return {name: statistics.median(v) for name, v in times.items()}


def init_gloo(comm=MPI.COMM_WORLD) -> None:
    """torch.distributed on gloo, ranks taken from MPI: over loopback, or on an emulated
    cluster (``mpisgd cluster``) over the nodes' NICs, rank 0's address the master."""
    import torch.distributed as dist
    if dist.is_initialized():
        return
    port = comm.bcast(29500 + os.getpid() % 2000 if comm.rank == 0 else None)
    if os.environ.get("MPISGD_CLUSTER"):
        import socket
        from mpisgd.emulated.hosts import SWITCH_IP
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((SWITCH_IP, 9))                # no packet: the route names eth0's address
            mine = s.getsockname()[0]
        os.environ["MASTER_ADDR"] = comm.bcast(mine, root=0)
        os.environ["GLOO_SOCKET_IFNAME"] = "eth0"
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=comm.rank, world_size=comm.size)


def machine() -> str:
    import platform
    cores = len(os.sched_getaffinity(0))
    return (f"{platform.processor() or platform.machine()}, {cores} cores, torch {torch.__version__}, "
            f"{MPI.Get_library_version().splitlines()[0].strip()}")


class NoStep:
    """An optimizer-shaped object whose step does nothing.

    Isolates communication in sync's step(); not a torch.optim.Optimizer,
    whose step wrapper alone costs about 0.1 ms.
    """

    def __init__(self, params):
        self.param_groups = [{"params": list(params), "lr": 0.0}]
        self.state = {}

    def step(self, closure=None):
        return None


def wide_model(params: int, layers: int = 4) -> torch.nn.Module:
    """``layers`` square Linear layers totalling about ``params`` parameters."""
    width = int((params / layers) ** 0.5)
    return torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
