"""``mpiexec -n P mpisgd calibrate [--out network.json]``: this allocation's alpha and beta.

Measures, over message sizes from 8 B to 16 MB (``--sizes``):

* point-to-point: a ping-pong between rank 0 and another rank, one-way
  time = half the round trip, the median over repetitions (at least 5, and
  at least 20 ms of them); the other ranks wait at a sleeping barrier. On
  one node the other rank is P-1; on several nodes (hosts as
  ``MPI_Get_processor_name`` tells, which ``mpisgd cluster`` sets) there are
  two pairs, fitted separately: rank 0 and the next rank on its node
  (``intra``, where it has one) and rank 0 and the first rank on another
  node (``inter``: the network between nodes);
* Allreduce (sum, float32) over all P ranks: the slowest rank's time, the
  median over repetitions.

Fits (:func:`mpisgd.network.fit`, least squares on relative error): the
point-to-point ``alpha + n beta`` (per level on several nodes, with the
bandwidth of the largest message, :func:`bandwidth`; the file's ``alpha``
and ``beta`` are then the inter-node ones), and the Allreduce as ``a + b n``, stored as
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


def bandwidth(points) -> float:
    """Bytes per second of the largest message measured (bytes / one-way seconds): what a
    link carries once a message is long enough that latency and a token bucket's burst
    no longer count. The alpha-beta fit weighs every size alike, so where small messages
    beat the rate (an emulated NIC's first frames pass at memory speed) its 1/beta is
    higher; this is the rate a large exchange meets."""
    n, t = max(points)
    return n / t


def pairs(hosts: list[str]) -> dict:
    """The ranks rank 0 ping-pongs with, by level, from every rank's host: ``{"p2p": P-1}``
    on one host; on several, ``{"intra": first other rank on rank 0's host (if any),
    "inter": first rank on another host}``."""
    if len(set(hosts)) == 1:
        return {"p2p": len(hosts) - 1}
    out = {"inter": next(r for r, h in enumerate(hosts) if h != hosts[0])}
    same = [r for r, h in enumerate(hosts) if h == hosts[0] and r]
    return ({"intra": same[0]} if same else {}) | out


def _pingpong(comm, partner: int, buf) -> float | None:
    """One-way seconds of ``buf`` between rank 0 and ``partner`` (``None`` elsewhere);
    collective over ``comm``."""
    from .._mpi import MPI
    rank = comm.Get_rank()
    pair = comm.Split(0 if rank in (0, partner) else MPI.UNDEFINED, rank)
    t = None
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
    idle_barrier(comm)
    return comm.bcast(t, root=0)


def measure(comm, sizes=SIZES) -> dict:
    """``{LEVEL: [(bytes, s)], "allreduce": [(bytes, s)]}`` on every rank, LEVEL the keys
    of :func:`pairs` (``p2p``, or ``intra`` and ``inter``)."""
    from .._mpi import MPI
    levels = pairs(comm.allgather(MPI.Get_processor_name()))
    out = {level: [] for level in levels} | {"allreduce": []}
    for n in sizes:
        buf = np.zeros(max(1, n // 4), dtype=np.float32)
        for level, partner in levels.items():
            out[level].append((n, _pingpong(comm, partner, buf)))
        result = np.empty_like(buf)
        t = _repeat(lambda: comm.Allreduce(buf, result, op=MPI.SUM), comm)
        out["allreduce"].append((n, comm.allreduce(t, op=MPI.MAX)))
    return out


def calibrate(comm, sizes=SIZES) -> Network:
    """Measure and fit on ``comm``; the :class:`Network` (with the Allreduce's own fit)."""
    p = comm.Get_size()
    if p < 2:
        raise ConfigError("calibrate needs at least 2 ranks (mpiexec -n 2 or more)")
    points = measure(comm, sizes)
    levels = {level: {**dict(zip(("alpha", "beta"), fit(*zip(*points[level])))),
                      "bandwidth": bandwidth(points[level])}
              for level in ("intra", "inter") if level in points}
    if "p2p" in points:
        alpha, beta = fit(*zip(*points["p2p"]))
    else:                             # the file's pair and the table's column: between nodes
        alpha, beta = levels["inter"]["alpha"], levels["inter"]["beta"]
        points["p2p"] = points["inter"]
    a, b = fit(*zip(*points["allreduce"]))
    hosts = len(set(comm.allgather(socket.gethostname())))
    return Network(alpha, beta, source=f"mpisgd calibrate, {p} ranks on {hosts} hosts, "
                                       f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
                   allreduce={"alpha": a / (2 * (p - 1)), "beta": b * p / (2 * (p - 1)),
                              "ranks": p, "points": points["allreduce"]},
                   levels=levels), points


def main(comm, out: str | None, sizes=SIZES) -> int:
    net, points = calibrate(comm, sizes)
    if comm.Get_rank() == 0:
        p = comm.Get_size()
        print(f"mpisgd calibrate: {net.source}")
        for level, (a, b) in ([(k, (v["alpha"], v["beta"])) for k, v in net.levels.items()]
                              or [("p2p", (net.alpha, net.beta))]):
            name = {"p2p": "point-to-point", "intra": "inside a node",
                    "inter": "between nodes"}[level]
            large = (f"; {8 * net.levels[level]['bandwidth'] / 1e9:.3g} Gbit/s at "
                     f"{max(sizes) / 1e6:g} MB") if level in net.levels else ""
            print(f"{name}: alpha {a * 1e6:.2f} us, beta {b * 1e9:.4f} ns/B "
                  f"({8 / b / 1e9 if b else float('inf'):.3g} Gbit/s{large})")
        print(f"allreduce (ring model at {p} ranks): alpha {net.allreduce['alpha'] * 1e6:.2f} us, "
              f"beta {net.allreduce['beta'] * 1e9:.4f} ns/B")
        print(f"{'bytes':>10} {'inter us' if 'inter' in net.levels else 'p2p us':>10} {'fit':>10} {'allreduce us':>13} {'fit':>10}")
        for (n, t), (_, u) in zip(points["p2p"], points["allreduce"]):
            print(f"{n:>10} {t * 1e6:>10.2f} {net.p2p(n) * 1e6:>10.2f} {u * 1e6:>13.2f} "
                  f"{net.allreduce_time(n, p, 'ring') * 1e6:>10.2f}")
        if out:
            net.save(out, {"p2p_points": points["p2p"], "mpi_ranks": p,
                           **({"intra_points": points["intra"]} if "intra" in points else {})})
            print(f"network: {out}")
    return 0
