"""The alpha-beta model of a network, its fit to measurements, and its collectives.

A message of n bytes between two ranks takes ``alpha + n beta`` seconds
(Hockney; LogGP's L + o and G). Collectives over p ranks, per rank:

* ring Allreduce (reduce-scatter then allgather, 2(p-1) steps of n/p bytes):
  ``2 (p-1) alpha + 2 (p-1)/p n beta``; its bandwidth term is the bus-bandwidth
  limit (NCCL's busbw): no Allreduce moves fewer than 2(p-1)/p n bytes per rank;
* tree (recursive doubling, ceil(log2 p) steps of n bytes): ``ceil(log2 p)
  (alpha + n beta)``, the latency-optimal one for small messages;
  ``allreduce(..., "auto")`` is the faster of the two, as MPI libraries choose;
* neighbour exchange of degree d (``MPI_Neighbor_allgather``): d messages of n
  bytes through the rank's one link, ``d (alpha + n beta)``;
* a server receiving or sending m messages of n bytes: ``m (alpha + n beta)``.

:func:`fit` fits (alpha, beta) to measured (bytes, seconds) pairs by least
squares on relative error (each size counts alike from 8 B to 64 MB);
:class:`Network` is the pair, saved as JSON by ``mpisgd calibrate``.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class Network:
    """Point-to-point latency ``alpha`` (s) and inverse bandwidth ``beta`` (s/byte)."""
    alpha: float
    beta: float
    source: str = ""                       #: where it came from (a calibration, the command line)
    allreduce: dict = field(default_factory=dict)    #: the Allreduce's own fit, when measured
    #: point-to-point fits by level, when measured on several nodes: ``{"intra": {"alpha":
    #: A, "beta": B}, "inter": {...}}`` (alpha, beta above are then the inter-node pair)
    levels: dict = field(default_factory=dict)

    def p2p(self, n: float) -> float:
        return self.alpha + n * self.beta

    def level(self, name: str) -> "Network":
        """The point-to-point pair of level ``name`` (``intra``, ``inter``) where measured,
        else this network."""
        fit = self.levels.get(name)
        if not fit:
            return self
        return Network(fit["alpha"], fit["beta"], f"{self.source} ({name})")

    def ring(self, n: float, p: int, sharing: int = 1) -> float:
        """A ring reduce-scatter (or all-gather) of ``n`` bytes over ``p`` ranks, per rank:
        ``(p-1) alpha + (p-1)/p n beta``, the bandwidth shared by ``sharing`` ranks that
        use one link at once (the ranks of a node across the fabric)."""
        if p <= 1:
            return 0.0
        return (p - 1) * self.alpha + (p - 1) / p * n * self.beta * sharing

    def allreduce_time(self, n: float, p: int, algorithm: str = "auto") -> float:
        """Seconds of an Allreduce of ``n`` bytes over ``p`` ranks."""
        if p <= 1:
            return 0.0
        alpha, beta = self.allreduce.get("alpha", self.alpha), self.allreduce.get("beta", self.beta)
        ring = 2 * (p - 1) * alpha + 2 * (p - 1) / p * n * beta
        tree = math.ceil(math.log2(p)) * (alpha + n * beta)
        return {"ring": ring, "tree": tree, "auto": min(ring, tree)}[algorithm]

    def neighbours(self, n: float, degree: int) -> float:
        return degree * self.p2p(n)

    def save(self, path: str, extra: dict | None = None) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({**asdict(self), **(extra or {})}, f, indent=1)

    @classmethod
    def parse(cls, text: str) -> "Network":
        """A calibration file, or ``ALPHA,BETA`` (seconds, seconds per byte)."""
        if "," in text and not text.endswith(".json"):
            try:
                alpha, beta = (float(v) for v in text.split(","))
            except ValueError:
                raise ValueError(f"--network must be a calibration file or ALPHA,BETA, got {text!r}") from None
            if not (alpha >= 0 and beta >= 0):
                raise ValueError(f"--network ALPHA,BETA must be non-negative, got {text!r}")
            return cls(alpha, beta, source=f"alpha={alpha:g} s, beta={beta:g} s/B")
        try:
            with open(text, encoding="utf-8") as f:
                body = json.load(f)
            return cls(float(body["alpha"]), float(body["beta"]), body.get("source", text),
                       dict(body.get("allreduce", {})), dict(body.get("levels", {})))
        except FileNotFoundError:
            raise ValueError(f"--network {text}: no such file (give mpisgd calibrate's file, "
                             "or ALPHA,BETA)") from None
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"--network {text}: not a calibration file ({err})") from None


def fit(sizes, seconds) -> tuple[float, float]:
    """``(alpha, beta)`` minimising sum(((alpha + n beta) - t) / t)^2, both kept >= 0."""
    n, t = np.asarray(sizes, float), np.asarray(seconds, float)
    A = np.stack([1 / t, n / t], 1)
    (alpha, beta), *_ = np.linalg.lstsq(A, np.ones_like(t), rcond=None)
    if alpha < 0:                      # latency below resolution: bandwidth alone
        alpha, beta = 0.0, float(np.sum(n / t) / np.sum((n / t) ** 2))
    if beta < 0:
        alpha, beta = float(np.sum(1 / t) / np.sum(1 / t ** 2)), 0.0
    return float(alpha), float(beta)
