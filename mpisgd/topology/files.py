"""W from a file: a ``.npy`` or ``.csv`` matrix, or an edge list (docs/topologies.md)."""
from __future__ import annotations

import os
import re

import numpy as np
import torch

from .graphs import adjacency, mixing_weights


def _lines(path: str):
    """(line number, numbers as strings) for every non-blank line, # comments dropped."""
    with open(path) as f:
        for number, line in enumerate(f, 1):
            tokens = [t for t in re.split(r"[,\s]+", line.split("#")[0]) if t]
            if tokens:
                yield number, tokens


def _number(path, line, token, kind=float):
    try:
        return kind(token)
    except ValueError:
        what = "a node number" if kind is int else "a number"
        raise ValueError(f"{path} line {line}: cannot read {token!r} as {what}") from None


def load(path: str, n: int, rule: str = "metropolis") -> torch.Tensor:
    """W for n nodes (n = the number of workers/ranks) from a file.

    ``.npy``: the matrix. ``.csv``: one row per line, numbers separated by
    commas or spaces. Anything else is an edge list, one edge per line:
    ``i j`` (an undirected edge; W = ``mixing_weights(graph, rule)``) or,
    on every line, ``i j w`` (W[i, j] = W[j, i] = w, W_ii = 1 - row sum).
    ``#`` starts a comment. The result is not validated: see :func:`validate`.
    """
    if not os.path.isfile(path):
        raise ValueError(f"topology file {path}: no such file")
    if path.endswith(".npy"):
        try:
            W = np.asarray(np.load(path, allow_pickle=False), dtype=np.float64)
        except (ValueError, OSError) as err:
            raise ValueError(f"topology file {path}: not a numeric .npy array ({err})") from None
    elif path.endswith(".csv"):
        rows = [(ln, [_number(path, ln, t) for t in tokens]) for ln, tokens in _lines(path)]
        for ln, row in rows:
            if len(row) != len(rows[0][1]):
                raise ValueError(f"{path} line {ln}: {len(row)} numbers, but line "
                                 f"{rows[0][0]} has {len(rows[0][1])}")
        W = np.array([row for _, row in rows], dtype=np.float64).reshape(len(rows), -1 if rows else 0)
    else:
        return _load_edges(path, n, rule)
    if W.shape != (n, n):
        raise ValueError(f"W in {path} is {'x'.join(map(str, W.shape))} but there are {n} nodes")
    return torch.from_numpy(W.copy())


def _load_edges(path: str, n: int, rule: str) -> torch.Tensor:
    edges, first = [], None
    for ln, tokens in _lines(path):
        if len(tokens) not in (2, 3):
            raise ValueError(f"{path} line {ln}: expected 'i j' or 'i j w', got {' '.join(tokens)!r}")
        first = first or (ln, len(tokens))
        if len(tokens) != first[1]:
            raise ValueError(f"{path} line {ln}: {len(tokens)} numbers, but line {first[0]} has "
                             f"{first[1]}: write 'i j' on every line or 'i j w' on every line")
        i, j = (_number(path, ln, t, int) for t in tokens[:2])
        for node in (i, j):
            if not 0 <= node < n:
                raise ValueError(f"{path} line {ln}: node {node} is out of range for n = {n} "
                                 f"(n is the number of workers/ranks: nodes are 0..{n - 1})")
        if i == j:
            raise ValueError(f"{path} line {ln}: self-loop {i} {j}: a self weight is not listed, "
                             "it is 1 minus the node's other weights")
        edges.append((i, j, _number(path, ln, tokens[2]) if len(tokens) == 3 else None))
    if first is None or first[1] == 2:
        return mixing_weights(adjacency(n, ((i, j) for i, j, _ in edges)), rule)
    W = torch.zeros(n, n, dtype=torch.float64)
    for i, j, w in edges:
        W[i, j] = W[j, i] = w
    return W + torch.diag(1 - W.sum(1))
