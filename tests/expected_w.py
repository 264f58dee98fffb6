"""Mixing matrices written out from their definitions (docs/topologies.md, REFERENCES.md), for
the oracle tests: never from ``mpisgd.topology``, the code under test.

Row convention: a round is x_i <- sum_j W[i, j] x_j. float64 torch tensors.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from mpisgd import streams


def edges(name: str, n: int) -> set[tuple[int, int]]:
    """The undirected edges {i, j} (i < j) of graph ``name`` on n nodes."""
    out = set()

    def link(i, j):
        if i != j:
            out.add((min(i, j), max(i, j)))
    for i in range(n):
        if name == "ring":
            link(i, (i + 1) % n)
        elif name == "exponential":                  # i ~ i +- 2^k for every 2^k < n
            for k in range(n):
                if 2 ** k >= n:
                    break
                link(i, (i + 2 ** k) % n)
        elif name == "complete":
            for j in range(n):
                link(i, j)
        elif name == "star":
            link(0, i)
        elif name == "torus":                        # rows: the largest divisor <= sqrt(n)
            rows = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
            cols = n // rows
            r, c = divmod(i, cols)
            link(i, ((r + 1) % rows) * cols + c)
            link(i, r * cols + (c + 1) % cols)
        else:
            raise ValueError(name)
    return out


def erdos_renyi(n: int, p: float, seed: int) -> set[tuple[int, int]]:
    """Every edge i < j with probability p, from the stream ERDOS_RENYI (seed), redrawn until
    the graph is connected (docs/topologies.md)."""
    rng = streams.generator(streams.ERDOS_RENYI, seed)
    for _ in range(100):
        draw = rng.random((n, n)) < p
        found = {(i, j) for i in range(n) for j in range(i + 1, n) if draw[i, j]}
        if n == 1 or _connected(n, found):
            return found
    raise AssertionError("no connected draw")


def _connected(n: int, found) -> bool:
    seen, todo = {0}, [0]
    while todo:
        i = todo.pop()
        for a, b in found:
            for u, v in ((a, b), (b, a)):
                if u == i and v not in seen:
                    seen.add(v)
                    todo.append(v)
    return len(seen) == n


def degrees(n: int, found) -> list[int]:
    return [sum(i in e for e in found) for i in range(n)]


def _metropolis(n: int, found) -> np.ndarray:
    """W_ij = 1 / (1 + max(d_i, d_j)) on each edge, W_ii what makes the row sum to 1."""
    d = degrees(n, found)
    W = np.zeros((n, n))
    for i, j in found:
        W[i, j] = W[j, i] = 1.0 / (1 + max(d[i], d[j]))
    for i in range(n):
        W[i, i] = 1.0 - sum(W[i, j] for j in range(n) if j != i)
    return W


def _uniform(n: int, found) -> np.ndarray:
    """W_ij = 1 / (d_i + 1) for j = i and each neighbour j."""
    d = degrees(n, found)
    W = np.zeros((n, n))
    for i in range(n):
        W[i, i] = 1.0 / (d[i] + 1)
    for i, j in found:
        W[i, j], W[j, i] = 1.0 / (d[i] + 1), 1.0 / (d[j] + 1)
    return W


def _w_alpha(m: int, alpha: float) -> np.ndarray:
    """EASGD's W_alpha over m workers and one centre (REFERENCES.md, Cooperative SGD):
    [[(1 - alpha) I_m, alpha 1], [alpha 1^T, 1 - m alpha]]."""
    W = np.zeros((m + 1, m + 1))
    W[:m, :m] = (1 - alpha) * np.eye(m)
    W[:m, m] = W[m, :m] = alpha
    W[m, m] = 1 - m * alpha
    return W


def _one_peer_exponential(n: int, k: int) -> np.ndarray:
    """Round k: x_i <- (x_i + x_{(i + 2^j) mod n}) / 2, j = k mod ceil(log2 n)."""
    if n == 1:
        return np.ones((1, 1))
    hop = 2 ** (k % max(1, math.ceil(math.log2(n))))
    W = np.zeros((n, n))
    for i in range(n):
        W[i, i] += 0.5
        W[i, (i + hop) % n] += 0.5
    return W


def _matcha_round(n: int, found, p: float, seed: int, alpha: float, k: int) -> np.ndarray:
    """MATCHA's round k: W_k = I - alpha sum of the Laplacians of the matchings active in round
    k (each with probability p, stream MATCHA (seed, k)); the matchings are a greedy edge
    colouring, edges (i < j) in lexicographic order each taking the lowest colour free at both
    ends. ``alpha`` is MATCHA's (an optimisation's result, read off the algorithm)."""
    colours, used = [], [set() for _ in range(n)]
    for i, j in sorted(found):
        c = 0
        while c in used[i] or c in used[j]:
            c += 1
        if c == len(colours):
            colours.append([])
        colours[c].append((i, j))
        used[i].add(c)
        used[j].add(c)
    active = streams.generator(streams.MATCHA, seed, k).random(len(colours)) < p
    W = np.eye(n)
    for on, matching in zip(active, colours):
        if on:
            for i, j in matching:
                W[i, i] -= alpha
                W[j, j] -= alpha
                W[i, j] += alpha
                W[j, i] += alpha
    return W


def _average(m: int) -> np.ndarray:
    """J = 11^T / m: every worker takes the mean."""
    return np.full((m, m), 1.0 / m)


def rounds(spec: str, n: int, p=None, matcha=None, seed: int = 0, alpha=None,
           weights: str = "metropolis"):
    """k -> W_k (torch, float64) of the topology ``spec`` on n nodes, as gossip runs it;
    MATCHA's ``alpha`` is the one value read off the code (an optimisation's result)."""
    if spec == "one-peer-exponential":
        return lambda k: one_peer_exponential(n, k)
    found = erdos_renyi(n, p, seed) if spec == "erdos-renyi" else edges(spec, n)
    if matcha is not None:
        return lambda k: matcha_round(n, found, matcha, seed, alpha, k)
    W = {"metropolis": metropolis, "uniform": uniform}[weights](n, found)
    return lambda k: W


def _torch(f):
    """``f`` returning its numpy array as a float64 torch tensor."""
    def wrapped(*args):
        return torch.from_numpy(f(*args))
    wrapped.__doc__, wrapped.__name__ = f.__doc__, f.__name__.lstrip("_")
    return wrapped


metropolis, uniform, w_alpha = _torch(_metropolis), _torch(_uniform), _torch(_w_alpha)
one_peer_exponential, matcha_round, average = (_torch(_one_peer_exponential),
                                               _torch(_matcha_round), _torch(_average))
