"""``mpiexec -n P mpisgd calibrate [--out network.json]``: this allocation's alpha and beta.

Measures, over message sizes from 8 B to 16 MB (``--sizes``):

* point-to-point: a ping-pong between rank 0 and rank P-1 (on different
  nodes when the launcher fills nodes in order), one-way time = half the
  round trip, the median over repetitions (at least 5, and at least 20 ms
  of them); the other ranks wait at a sleeping barrier;
* Allreduce (sum, float32) over all P ranks: the slowest rank's time, the
  median over repetitions.

Fits (:func:`mpisgd.network.fit`, least squares on relative error): the
point-to-point ``alpha + n beta``, and the Allreduce as ``a + b n``, stored as
the ring model's per-step ``alpha = a / (2 (P-1))`` and ``beta = b P / (2 (P-1))``
(so that :meth:`~mpisgd.network.Network.allreduce_time` reproduces it at P
ranks). Rank 0 prints the measured and fitted times and writes the JSON file
that ``mpisgd project --network FILE`` reads.
"""
from __future__ import annotations

import socket
import statistics
import time
from datetime import datetime, timezone

import numpy as np

from .._mpi import idle_barrier
from ..errors import ConfigError
from ..network import Network, fit

SIZES = [8, 64, 512, 4096, 32768, 262144, 2097152, 16777216]


def _repeat(fn, comm, minimum: int = 5, seconds: float = 0.02) -> float:
    """Median seconds of ``fn()`` over enough calls (every rank agrees on the count)."""
    fn()
    t0 = time.perf_counter()
    fn()
    once = comm.allreduce(time.perf_counter() - t0, op=_max())
    times = []
    for _ in range(max(minimum, min(200, int(seconds / max(once, 1e-7))))):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _max():
    from .._mpi import MPI
    return MPI.MAX


def measure(comm, sizes=SIZES) -> dict:
    """``{"p2p": [(bytes, s)], "allreduce": [(bytes, s)]}``, on every rank."""
    from .._mpi import MPI
    rank, last = comm.Get_rank(), comm.Get_size() - 1
    p2p, allreduce = [], []
    for n in sizes:
        buf = np.zeros(max(1, n // 4), dtype=np.float32)
        pair = comm.Split(0 if rank in (0, last) else MPI.UNDEFINED, rank)
        if pair != MPI.COMM_NULL:
            other = 1 - pair.Get_rank()

            def pingpong():
                if pair.Get_rank() == 0:
                    pair.Send(buf, other)
                    pair.Recv(buf, other)
                else:
                    pair.Recv(buf, other)
                    pair.Send(buf, other)
            t = _repeat(pingpong, pair) / 2
            pair.Free()
        else:
            t = None
        idle_barrier(comm)
        p2p.append((n, comm.bcast(t, root=0)))
        out = np.empty_like(buf)
        t = _repeat(lambda: comm.Allreduce(buf, out, op=MPI.SUM), comm)
        allreduce.append((n, comm.allreduce(t, op=MPI.MAX)))
    return {"p2p": p2p, "allreduce": allreduce}


def calibrate(comm, sizes=SIZES) -> Network:
    """Measure and fit on ``comm``; the :class:`Network` (with the Allreduce's own fit)."""
    p = comm.Get_size()
    if p < 2:
        raise ConfigError("calibrate needs at least 2 ranks (mpiexec -n 2 or more)")
    points = measure(comm, sizes)
    alpha, beta = fit(*zip(*points["p2p"]))
    a, b = fit(*zip(*points["allreduce"]))
    hosts = len(set(comm.allgather(socket.gethostname())))
    return Network(alpha, beta, source=f"mpisgd calibrate, {p} ranks on {hosts} hosts, "
                                       f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
                   allreduce={"alpha": a / (2 * (p - 1)), "beta": b * p / (2 * (p - 1)),
                              "ranks": p, "points": points["allreduce"]}), points


def main(comm, out: str | None, sizes=SIZES) -> int:
    net, points = calibrate(comm, sizes)
    if comm.Get_rank() == 0:
        p = comm.Get_size()
        print(f"mpisgd calibrate: {net.source}")
        print(f"point-to-point: alpha {net.alpha * 1e6:.2f} us, beta {net.beta * 1e9:.4f} ns/B "
              f"({1 / net.beta / 1e9 if net.beta else float('inf'):.2f} GB/s)")
        print(f"allreduce (ring model at {p} ranks): alpha {net.allreduce['alpha'] * 1e6:.2f} us, "
              f"beta {net.allreduce['beta'] * 1e9:.4f} ns/B")
        print(f"{'bytes':>10} {'p2p us':>10} {'fit':>10} {'allreduce us':>13} {'fit':>10}")
        for (n, t), (_, u) in zip(points["p2p"], points["allreduce"]):
            print(f"{n:>10} {t * 1e6:>10.2f} {net.p2p(n) * 1e6:>10.2f} {u * 1e6:>13.2f} "
                  f"{net.allreduce_time(n, p, 'ring') * 1e6:>10.2f}")
        if out:
            net.save(out, {"p2p_points": points["p2p"], "mpi_ranks": p})
            print(f"network: {out}")
    return 0
