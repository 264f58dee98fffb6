"""Time-varying topologies: a different mixing matrix W_k in every gossip round.

Row convention as in :mod:`mpisgd.topology.graphs`: x_i <- sum_j W_k[i, j] x_j.
Both are built by ``topology.build`` ("one-peer-exponential", or a graph
name with ``matcha=p``) and are correct by construction; the tests
validate a few W_k.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .. import streams
from ..streams import generator
from .graphs import check_seed, checked_graph, unreached
from .spectral import ternary_min
from .static import Topology


class OnePeerExponential(Topology):
    """Round k: node i averages with node (i + 2^j) mod n, j = k mod ceil(log2 n).

    W_k[i, i] = W_k[i, (i + 2^j) mod n] = 1/2: one in- and one out-neighbour
    per node and round, doubly stochastic, not symmetric unless n <= 2.
    For n a power of 2 the product of one period is exactly 11^T/n. n = 1:
    the identity. (Ying et al. 2021, "Exponential graph is provably
    efficient for decentralized deep training".)
    """
    time_varying = True

    def __init__(self, n: int):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive number of nodes, got {n}")
        self.name, self.n, self.symmetric = "one-peer-exponential", n, n <= 2
        self.period = max(1, math.ceil(math.log2(n)))

    def matrix(self, k: int) -> torch.Tensor:
        if self.n == 1:
            return torch.ones(1, 1, dtype=torch.float64)
        i = torch.arange(self.n)
        W = torch.zeros(self.n, self.n, dtype=torch.float64)
        W[i, i] = 0.5
        W[i, (i + 2 ** (k % self.period)) % self.n] += 0.5
        return W


def _matchings(A: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Greedy edge colouring: edges (i < j) in lexicographic order each take
    the lowest colour used by no other edge at i or j (at most 2 d_max - 1
    colours). Each colour class is a matching."""
    colours: list[list[tuple[int, int]]] = []
    used: list[set] = [set() for _ in range(len(A))]
    for i, j in (A.triu(1)).nonzero().tolist():
        c = next(c for c in range(len(colours) + 1) if c not in used[i] | used[j])
        if c == len(colours):
            colours.append([])
        colours[c].append((i, j))
        used[i].add(c)
        used[j].add(c)
    return colours


class Matcha(Topology):
    """MATCHA (Wang et al. 2019): random disjoint subgraphs of a base graph.

    The base graph's edges split into matchings M_1..M_K (:func:`_matchings`).
    In round k each matching is active independently with probability p,
    drawn from the stream ``MATCHA`` (seed, k) (every rank draws the
    same, any round without the previous ones), and

        W_k = I - alpha sum_{active j} L_j,   L_j the Laplacian of M_j,

    symmetric with rows summing to 1. With L = sum_j L_j and L_j^2 = 2 L_j
    (disjoint edges), E[W_k] = I - alpha p L and
    E[W_k^T W_k] = I - 2 alpha p L + alpha^2 (p^2 L^2 + 2 p (1 - p) L):
    a polynomial in L, so on 1^perp its eigenvalues are
    f(lambda) = 1 - 2 alpha p lambda + alpha^2 (p^2 lambda^2 + 2 p (1-p) lambda)
    over L's eigenvalues lambda_2..lambda_n. alpha minimises
    rho = ||E[W^T W] - 11^T/n||_2 = max f (MATCHA's criterion); each f is
    convex in alpha, so is their maximum, and a ternary search finds it.
    Unlike MATCHA, alpha is kept <= 1/d_max so that every W_k is
    non-negative (a node is in at most one edge per matching), and every
    matching has the same p (MATCHA optimises one p_j per matching under a
    communication budget).
    """
    time_varying, symmetric, period = True, True, None

    def __init__(self, base_adjacency: torch.Tensor, p: float, seed: int = 0, name: str = "matcha"):
        A = checked_graph(base_adjacency)
        if not 0 < p <= 1:
            raise ValueError(f"the MATCHA activation probability must be in (0, 1], got {p}")
        check_seed(seed)
        pair = unreached(A) if len(A) > 1 else None
        if pair is not None:
            raise ValueError(f"the base graph of MATCHA is not connected: "
                             f"node {pair[1]} cannot be reached from node {pair[0]}")
        self.name, self.n, self.p, self.seed, self.base = name, len(A), p, seed, A
        self.matchings = _matchings(A)
        self.laplacians = torch.zeros(len(self.matchings), self.n, self.n, dtype=torch.float64)
        for L, matching in zip(self.laplacians, self.matchings):
            for i, j in matching:
                L[i, i] = L[j, j] = 1.0
                L[i, j] = L[j, i] = -1.0
        self.L = self.laplacians.sum(0)
        lam = torch.linalg.eigvalsh(self.L)[1:]
        self.alpha_max = 1 / int(A.sum(1).max()) if self.n > 1 else 0.0
        self.alpha, self.rho = self._best_alpha(lam, p, self.alpha_max)

    @staticmethod
    def _best_alpha(lam: torch.Tensor, p: float, alpha_max: float) -> tuple[float, float]:
        """argmin over 0 <= alpha <= alpha_max of rho = max f(lambda), and that rho."""
        def rho(a):
            return (1 - 2 * a * p * lam + a * a * (p * p * lam ** 2 + 2 * p * (1 - p) * lam)).max().item()
        if not len(lam):            # n = 1
            return 0.0, 0.0
        return ternary_min(rho, 0.0, alpha_max)

    def active(self, k: int) -> np.ndarray:
        """The matchings active in round k (bool, one per matching)."""
        return generator(streams.MATCHA, self.seed, k).random(len(self.laplacians)) < self.p

    def matrix(self, k: int) -> torch.Tensor:
        on = torch.from_numpy(self.active(k))
        return torch.eye(self.n, dtype=torch.float64) - self.alpha * self.laplacians[on].sum(0)

    def support(self) -> torch.Tensor:
        return self.base.clone()

    def notes(self) -> list[str]:
        capped = self.n > 1 and self.alpha >= self.alpha_max - 1e-9
        return [f"each of {len(self.matchings)} matchings active with probability p = {self.p:g} "
                f"(seed {self.seed})",
                f"alpha = {self.alpha:.6g}, ||E[W^T W] - 11^T/n||_2 = {self.rho:.6g} "
                + ("(alpha at its cap 1/d_max, which keeps every W_k non-negative)" if capped
                   else "(alpha minimises it)")]

    def expected(self) -> torch.Tensor:
        return torch.eye(self.n, dtype=torch.float64) - self.alpha * self.p * self.L
