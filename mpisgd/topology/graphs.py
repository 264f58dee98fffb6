"""Graphs and their mixing weights W, and the validation of any W.

Convention (ROW convention): one gossip round is

    x_i <- sum_j W[i, j] x_j,

so row i says whom node i listens to: node i receives x_j from every j != i
with W[i, j] != 0 and sends its own x_i to every j with W[j, i] != 0. A
valid W is non-negative and doubly stochastic (W 1 = 1 keeps a consensus,
1^T W = 1^T keeps the average) with a strongly connected graph of
nonzeros. Every matrix here is an n x n torch float64 tensor; a graph is
an n x n symmetric bool tensor with a False diagonal.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .. import streams
from ..streams import generator
from .spectral import TOL, is_symmetric

GRAPHS = ("ring", "torus", "hypercube", "exponential", "complete", "star", "erdos-renyi")
WEIGHTS = ("metropolis", "uniform")


def check_seed(seed) -> None:
    """``ValueError`` unless ``seed`` is a non-negative integer (random graphs, matchings)."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"the seed must be a non-negative integer, got {seed}")


def adjacency(n: int, edges) -> torch.Tensor:
    A = torch.zeros(n, n, dtype=torch.bool)
    for i, j in edges:
        if i != j:
            A[i, j] = A[j, i] = True
    return A


def unreached(S: torch.Tensor):
    """For the directed graph "j -> i when S[i, j]" (x_j flows to i): a pair
    (src, dst) with dst unreachable from src, checking from node 0 both
    ways (strong connectivity), or None."""
    for flow, forward in ((S, True), (S.T, False)):
        seen = torch.zeros(len(S), dtype=torch.bool)
        seen[0] = True
        frontier = seen.clone()
        while frontier.any():
            new = flow[:, frontier].any(1) & ~seen
            seen |= new
            frontier = new
        if not seen.all():
            other = int((~seen).nonzero()[0])
            return (0, other) if forward else (other, 0)
    return None


def _erdos_renyi(n: int, p: float | None, seed: int) -> torch.Tensor:
    p = min(1.0, 2 * math.log(n) / n) if p is None else p
    check_seed(seed)
    if n == 1:
        return torch.zeros(1, 1, dtype=torch.bool)
    rng = generator(streams.ERDOS_RENYI, seed)
    for _ in range(100):
        upper = np.triu(rng.random((n, n)) < p, k=1)
        A = torch.from_numpy(upper | upper.T)
        if unreached(A) is None:
            return A
    raise ValueError(f"erdos-renyi with n = {n}, p = {p:g} was not connected in 100 draws "
                     f"(seed {seed}): use a larger p (above ln(n)/n = {math.log(n) / n:.3g})")


def graph(name: str, n: int, p: float | None = None, seed: int = 0) -> torch.Tensor:
    """The undirected graph ``name`` on n nodes: symmetric bool n x n, False diagonal.

    ring: i ~ i +- 1 (mod n), degree 2 (1 for n = 2).
    torus: rows x cols = n, rows the largest divisor of n <= sqrt(n), node
    r*cols + c ~ (r +- 1, c), (r, c +- 1) with wrap-around: degree 4 when
    rows, cols >= 3 (3 for a 2 x cols torus, 2 for 2 x 2; n <= 3 is a ring).
    hypercube: n = 2^d, i ~ i XOR 2^b, degree d.
    exponential: i ~ (i +- 2^k) mod n for every 2^k < n.
    complete: degree n - 1. star: node 0 is the hub (degree n - 1), the
    others have degree 1.
    erdos-renyi: every edge with probability p (default min(1, 2 ln(n)/n))
    from the stream ``ERDOS_RENYI`` (seed), redrawn from the same generator
    until connected (at most 100 draws): a function of (n, p, seed) only.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive number of nodes, got {n}")
    if p is not None and name != "erdos-renyi":
        raise ValueError(f"p is the edge probability of erdos-renyi; {name} takes none")
    if p is not None and not 0 < p <= 1:
        raise ValueError(f"the edge probability p must be in (0, 1], got {p}")
    nodes = range(n)
    if name == "ring":
        return adjacency(n, ((i, (i + 1) % n) for i in nodes))
    if name == "torus":
        rows = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
        if rows == 1 and n > 3:
            raise ValueError(f"a 2-D torus needs n = rows x cols with rows, cols >= 2; "
                             f"n = {n} is prime: use ring")
        cols = n // rows
        return adjacency(n, [(i, (i // cols + 1) % rows * cols + i % cols) for i in nodes]
                          + [(i, i // cols * cols + (i % cols + 1) % cols) for i in nodes])
    if name == "hypercube":
        if n & (n - 1):
            raise ValueError(f"a hypercube needs n a power of 2, got n = {n}")
        bits = [2 ** k for k in range(n.bit_length() - 1)]
        return adjacency(n, ((i, i ^ b) for i in nodes for b in bits))
    if name == "exponential":
        hops = [2 ** k for k in range(n.bit_length()) if 2 ** k < n]
        return adjacency(n, ((i, (i + h) % n) for i in nodes for h in hops))
    if name == "complete":
        return ~torch.eye(n, dtype=torch.bool)
    if name == "star":
        return adjacency(n, ((0, i) for i in nodes))
    if name == "erdos-renyi":
        return _erdos_renyi(n, p, seed)
    raise ValueError(f"unknown graph {name!r}: known are {', '.join(GRAPHS)}")


def checked_graph(adjacency: torch.Tensor) -> torch.Tensor:
    A = torch.as_tensor(adjacency).to(torch.bool)
    if A.dim() != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"an adjacency matrix must be square, got shape {tuple(A.shape)}")
    A = A & ~torch.eye(len(A), dtype=torch.bool)
    if not torch.equal(A, A.T):
        i, j = (A != A.T).nonzero()[0].tolist()
        raise ValueError(f"the graph must be undirected: edge {i}-{j} is set but not {j}-{i}")
    return A


def mixing_weights(adjacency: torch.Tensor, rule: str = "metropolis") -> torch.Tensor:
    """W from an undirected graph with degrees d_i.

    metropolis (Metropolis-Hastings): W_ij = 1/(1 + max(d_i, d_j)) on edges,
    W_ii = 1 - sum_{j != i} W_ij: symmetric and doubly stochastic on any graph.
    uniform: W_ij = 1/(d_i + 1) for j = i and every neighbour j: doubly
    stochastic only on a regular graph.
    """
    A = checked_graph(adjacency)
    d = A.sum(1).to(torch.float64)
    if rule == "metropolis":
        W = torch.where(A, 1 / (1 + torch.maximum(d[:, None], d[None, :])), 0.0)
        return W + torch.diag(1 - W.sum(1))
    if rule == "uniform":
        return (A | torch.eye(len(A), dtype=torch.bool)) / (d[:, None] + 1)
    raise ValueError(f"unknown weight rule {rule!r}: known are {', '.join(WEIGHTS)}")


def validate(W: torch.Tensor, symmetric: bool = True, what: str = "W",
             connected: bool = True) -> None:
    """Raise ValueError naming the first offending entry, row, column or node.

    Checks, in order: square; finite; non-negative; rows sum to 1; columns
    sum to 1 (doubly stochastic: gossip keeps the average); symmetric (if
    asked); the directed graph of nonzeros strongly connected (if asked:
    one round of a time-varying topology need not be). Sums and symmetry
    within 1e-6.
    """
    if W.dim() != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"{what} must be square, got shape {tuple(W.shape)}")
    W = W.to(torch.float64)
    if not torch.isfinite(W).all():
        i, j = (~torch.isfinite(W)).nonzero()[0].tolist()
        raise ValueError(f"{what}[{i}, {j}] is {W[i, j].item()}")
    if (W < 0).any():
        i, j = (W < 0).nonzero()[0].tolist()
        raise ValueError(f"{what}[{i}, {j}] = {W[i, j].item():.6g} is negative: "
                         "mixing weights must be non-negative")
    for axis, kind in ((1, "row"), (0, "column")):
        sums = W.sum(axis)
        bad = ((sums - 1).abs() > TOL).nonzero()
        if len(bad):
            i = int(bad[0])
            message = f"{kind} {i} of {what} sums to {sums[i].item():.6g}, not 1"
            if kind == "column":
                message += f": {what} must be doubly stochastic so that gossip preserves the average"
                rows = [row[row != 0] for row in W]          # equal nonzeros in every row?
                if all(r.max() - r.min() <= TOL for r in rows):
                    message += (" (these look like uniform weights on an irregular graph: "
                                "use metropolis weights)")
            raise ValueError(message)
    if symmetric and not is_symmetric(W):
        i, j = ((W - W.T).abs() > TOL).nonzero()[0].tolist()
        raise ValueError(f"{what} is not symmetric: {what}[{i}, {j}] = {W[i, j].item():.6g} "
                         f"but {what}[{j}, {i}] = {W[j, i].item():.6g}")
    pair = unreached(W != 0) if connected else None
    if pair is not None:
        raise ValueError(f"the graph of {what} is not connected: "
                         f"node {pair[1]} cannot be reached from node {pair[0]}")
