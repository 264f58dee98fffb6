"""Mixing matrices W for gossip SGD, and how fast they mix: the spectrum and zeta.

Convention (ROW convention): one gossip round is

    x_i <- sum_j W[i, j] x_j,

so row i says whom node i listens to: node i receives x_j from every j != i
with W[i, j] != 0 and sends its own x_i to every j with W[j, i] != 0. A
valid W is non-negative and doubly stochastic (W 1 = 1 keeps a consensus,
1^T W = 1^T keeps the average) with a strongly connected graph of
nonzeros. Every matrix here is an n x n torch float64 tensor; a graph is
an n x n symmetric bool tensor with a False diagonal.

Cooperative SGD (Wang & Joshi 2018) bounds the error of A(tau, W, v) by
zeta = max(|lambda_2(W)|, |lambda_n(W)|) for a symmetric doubly
stochastic W (lambda_1 = 1): the smaller zeta, the faster the nodes agree.
For a non-symmetric W, zeta = ||W - 11^T/n||_2, the factor by which one
round shrinks the disagreement x - mean(x) in the worst case (the same
number for a symmetric doubly stochastic W).

EASGD is A(tau, W_alpha, 1) with
W_alpha = [[(1-alpha) I_m, alpha 1], [alpha 1^T, 1 - m alpha]], whose
spectrum is {1, 1 - alpha (m-1 times), 1 - (m+1) alpha}; zeta is smallest
at alpha = 2/(m+2), where zeta = m/(m+2) (m >= 2; for m = 1 the spectrum
is {1, 1 - 2 alpha}).

Static topologies live here, the time-varying ones (one-peer exponential,
MATCHA) in :mod:`mpisgd.topologies_tv`; :func:`build` makes either from a
name. ``python -m mpisgd topology ring -n 8`` and ``topology easgd -m 8``
print them; docs/topologies.md describes every graph, rule and file format.
"""
from __future__ import annotations

import math
import os
import re

import numpy as np
import torch

from .reference import elastic_matrix

GRAPHS = ("ring", "torus", "hypercube", "exponential", "complete", "star", "erdos-renyi")
WEIGHTS = ("metropolis", "uniform")
TOPOLOGIES = GRAPHS + ("one-peer-exponential",)
TOL = 1e-6 + 1e-12  # on row/column sums and symmetry (CSV files carry rounded decimals), + round-off


def spectrum(W: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of the symmetric matrix ``W``, largest first (float64)."""
    return torch.linalg.eigvalsh(W.to(torch.float64)).flip(0)


def _is_symmetric(W: torch.Tensor) -> bool:
    return bool((W - W.T).abs().max() <= TOL) if W.numel() else True


def zeta(W: torch.Tensor) -> float:
    """How much one round of W shrinks disagreement (0: exact averaging, 1: none).

    Symmetric W: max(|lambda_2|, |lambda_n|), the second-largest eigenvalue
    modulus. Otherwise the spectral norm ||W - 11^T/n||_2, which equals the
    former for a symmetric doubly stochastic W.
    """
    W = W.to(torch.float64)
    if len(W) < 2:
        return 0.0
    if _is_symmetric(W):
        lam = spectrum(W)
        return max(abs(lam[1].item()), abs(lam[-1].item()))
    return torch.linalg.matrix_norm(W - 1.0 / len(W), ord=2).item()


def best_elastic_alpha(m: int, tol: float = 1e-12) -> tuple[float, float]:
    """The alpha in (0, 2/(m+1)) minimising zeta(W_alpha), found numerically, and that zeta.

    zeta(W_alpha) is a maximum of absolute values of affine functions of
    alpha, hence convex: a ternary search finds its minimum. (The closed
    form is 2/(m+2); this computes it from the eigenvalues instead.)
    """
    lo, hi = 0.0, 2.0 / (m + 1)
    while hi - lo > tol:
        a, b = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        if zeta(elastic_matrix(m, a)) <= zeta(elastic_matrix(m, b)):
            hi = b
        else:
            lo = a
    alpha = (lo + hi) / 2
    return alpha, zeta(elastic_matrix(m, alpha))


def _grouped(values, digits: int = 10) -> str:
    """``1 (x1), 0.75 (x3), -0.25 (x1)``: equal eigenvalues counted once."""
    out: list[list] = []
    for v in (round(x, digits) + 0.0 for x in values):
        if out and out[-1][0] == v:
            out[-1][1] += 1
        else:
            out.append([v, 1])
    return ", ".join(f"{v:.6g} (x{n})" for v, n in out)


def describe_easgd(m: int, alpha: float | None = None, beta: float = 0.9) -> str:
    """The report of ``topology easgd``: W_alpha's spectrum, zeta, and the best alpha."""
    if m < 1:
        raise ValueError(f"-m must be a positive number of workers, got {m}")
    if alpha is None:
        alpha = beta / m
        chosen = f"alpha = {alpha:g} (beta {beta:g} / m, the paper's default)"
    else:
        chosen = f"alpha = {alpha:g}"
    W = elastic_matrix(m, alpha)
    best, best_zeta = best_elastic_alpha(m)
    return "\n".join([
        f"EASGD mixing matrix W_alpha: m = {m} workers + 1 centre, {chosen}",
        f"eigenvalues: {_grouped(spectrum(W).tolist())}",
        f"zeta = {zeta(W):.6g}",
        f"alpha minimising zeta: {best:.6f} (2/(m+2) = {2 / (m + 2):.6f}), "
        f"zeta = {best_zeta:.6f} (m/(m+2) = {m / (m + 2):.6f})",
    ])


# ---------------------------------------------------------------- graphs

def _adjacency(n: int, edges) -> torch.Tensor:
    A = torch.zeros(n, n, dtype=torch.bool)
    for i, j in edges:
        if i != j:
            A[i, j] = A[j, i] = True
    return A


def _unreached(S: torch.Tensor):
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
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"the seed must be a non-negative integer, got {seed}")
    if n == 1:
        return torch.zeros(1, 1, dtype=torch.bool)
    rng = np.random.default_rng(seed)
    for _ in range(100):
        upper = np.triu(rng.random((n, n)) < p, k=1)
        A = torch.from_numpy(upper | upper.T)
        if _unreached(A) is None:
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
    from ``numpy.random.default_rng(seed)``, redrawn from the same generator
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
        return _adjacency(n, ((i, (i + 1) % n) for i in nodes))
    if name == "torus":
        rows = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
        if rows == 1 and n > 3:
            raise ValueError(f"a 2-D torus needs n = rows x cols with rows, cols >= 2; "
                             f"n = {n} is prime: use ring")
        cols = n // rows
        return _adjacency(n, [(i, (i // cols + 1) % rows * cols + i % cols) for i in nodes]
                          + [(i, i // cols * cols + (i % cols + 1) % cols) for i in nodes])
    if name == "hypercube":
        if n & (n - 1):
            raise ValueError(f"a hypercube needs n a power of 2, got n = {n}")
        bits = [2 ** k for k in range(n.bit_length() - 1)]
        return _adjacency(n, ((i, i ^ b) for i in nodes for b in bits))
    if name == "exponential":
        hops = [2 ** k for k in range(n.bit_length()) if 2 ** k < n]
        return _adjacency(n, ((i, (i + h) % n) for i in nodes for h in hops))
    if name == "complete":
        return ~torch.eye(n, dtype=torch.bool)
    if name == "star":
        return _adjacency(n, ((0, i) for i in nodes))
    if name == "erdos-renyi":
        return _erdos_renyi(n, p, seed)
    raise ValueError(f"unknown graph {name!r}: known are {', '.join(GRAPHS)}")


def _checked_graph(adjacency: torch.Tensor) -> torch.Tensor:
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
    A = _checked_graph(adjacency)
    d = A.sum(1).to(torch.float64)
    if rule == "metropolis":
        W = torch.where(A, 1 / (1 + torch.maximum(d[:, None], d[None, :])), 0.0)
        return W + torch.diag(1 - W.sum(1))
    if rule == "uniform":
        return (A | torch.eye(len(A), dtype=torch.bool)) / (d[:, None] + 1)
    raise ValueError(f"unknown weight rule {rule!r}: known are {', '.join(WEIGHTS)}")


# ---------------------------------------------------------------- files

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
        return mixing_weights(_adjacency(n, ((i, j) for i, j, _ in edges)), rule)
    W = torch.zeros(n, n, dtype=torch.float64)
    for i, j, w in edges:
        W[i, j] = W[j, i] = w
    return W + torch.diag(1 - W.sum(1))


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
    if symmetric and not _is_symmetric(W):
        i, j = ((W - W.T).abs() > TOL).nonzero()[0].tolist()
        raise ValueError(f"{what} is not symmetric: {what}[{i}, {j}] = {W[i, j].item():.6g} "
                         f"but {what}[{j}, {i}] = {W[j, i].item():.6g}")
    pair = _unreached(W != 0) if connected else None
    if pair is not None:
        raise ValueError(f"the graph of {what} is not connected: "
                         f"node {pair[1]} cannot be reached from node {pair[0]}")


# ---------------------------------------------------------------- topologies

class Topology:
    """A mixing matrix W_k per gossip round k (0-based), static or time-varying.

    ``period``: the number of distinct matrices cycled (1 static), None
    for a random sequence. ``symmetric``: every W_k is symmetric.
    """
    name: str
    n: int
    time_varying = False
    symmetric: bool
    period: int | None = 1

    def matrix(self, k: int) -> torch.Tensor:
        """W_k, n x n float64."""
        raise NotImplementedError

    def support(self) -> torch.Tensor:
        """The communication graph: off-diagonal nonzeros of any W_k (bool n x n)."""
        S = torch.stack([self.matrix(k) != 0 for k in range(self.period)]).any(0)
        return S & ~torch.eye(self.n, dtype=torch.bool)

    def expected(self) -> torch.Tensor:
        """E[W_k]: the mean over one period (random topologies override it)."""
        return torch.stack([self.matrix(k) for k in range(self.period)]).mean(0)

    @property
    def zeta(self) -> float:
        """zeta(E[W_k])."""
        return zeta(self.expected())

    def notes(self) -> list[str]:
        """Lines of :func:`describe` particular to this kind of topology."""
        return []


class Static(Topology):
    """W_k = W in every round."""

    def __init__(self, W: torch.Tensor, name: str = "W"):
        self.W, self.name, self.n = W.to(torch.float64).clone(), name, len(W)
        self.symmetric = _is_symmetric(self.W)

    def matrix(self, k: int) -> torch.Tensor:
        return self.W


def build(spec: str, n: int, weights: str = "metropolis", p: float | None = None,
          matcha: float | None = None, seed: int = 0, alpha: float | None = None,
          beta: float = 0.9) -> Topology:
    """The topology named by ``spec`` for n nodes, validated.

    spec: a name in GRAPHS (W = ``mixing_weights(graph(spec, n, p, seed), weights)``,
    or ``Matcha(graph, matcha, seed)`` when ``matcha`` is given),
    "one-peer-exponential", "easgd" (W_alpha over n = m workers and one
    centre, n + 1 nodes in all, alpha default beta / m), or a file for
    :func:`load`. A static W is checked with ``validate(W, symmetric=False)``:
    an algorithm that needs symmetry checks it.
    """
    from .topologies_tv import Matcha, OnePeerExponential
    if matcha is not None and spec not in GRAPHS:
        raise ValueError(f"matcha applies to a graph ({', '.join(GRAPHS)}), not to {spec!r}")
    if alpha is not None and spec != "easgd":
        raise ValueError(f"alpha is the EASGD moving rate; {spec!r} takes none")
    if p is not None and spec != "erdos-renyi":
        raise ValueError(f"p is the edge probability of erdos-renyi; {spec!r} takes none")
    if spec in GRAPHS:
        A = graph(spec, n, p, seed)
        if matcha is not None:
            return Matcha(A, matcha, seed, name=f"matcha on {spec}")
        topo = Static(mixing_weights(A, weights), f"{spec}, {weights} weights")
    elif spec == "one-peer-exponential":
        return OnePeerExponential(n)
    elif spec == "easgd":
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"easgd needs a positive number of workers m, got {n}")
        alpha = beta / n if alpha is None else alpha
        topo = Static(elastic_matrix(n, alpha), f"easgd, m = {n} workers + 1 centre, alpha = {alpha:g}")
    elif "/" in spec or "." in spec or os.path.isfile(spec):
        topo = Static(load(spec, n, weights), spec)
        try:
            validate(topo.W, symmetric=False)
        except ValueError as err:
            raise ValueError(f"{spec}: {err}") from None
        return topo
    else:
        raise ValueError(f"unknown topology {spec!r}: known are {', '.join(TOPOLOGIES)}, easgd, "
                         "or a path to a matrix (.npy, .csv) or edge-list file")
    validate(topo.W, symmetric=False)
    return topo


def describe(topology: Topology, rounds: int = 20) -> str:
    """The report of ``python -m mpisgd topology``: degrees, weights, spectrum, zeta.

    A time-varying topology is summarised over one period, or over
    ``rounds`` rounds when it is random.
    """
    t, f = topology, (lambda x: f"{round(x, 12) + 0.0:.6g}")
    Ws = torch.stack([t.matrix(k) for k in range(t.period or rounds)])
    kind = ("static" if not t.time_varying else
            f"time-varying, period {t.period}" if t.period else "time-varying, random")
    lines = [f"{t.name}: n = {t.n} nodes, {kind}, {'' if t.symmetric else 'not '}symmetric"]
    S = t.support()
    d_in, d_out = S.sum(1), S.sum(0)

    def stats(d):
        return f"min {int(d.min())} / mean {d.double().mean().item():.4g} / max {int(d.max())}"
    union = "communication graph (union over rounds): " if t.time_varying else ""
    lines.append(f"{union}in-degree {stats(d_in)}, out-degree {stats(d_out)} (neighbours, self excluded)")
    if t.n <= 32:
        per = (" ".join(map(str, d_in.tolist())) if torch.equal(d_in, d_out) else
               " ".join(f"{a}/{b}" for a, b in zip(d_in.tolist(), d_out.tolist())) + " (in/out)")
        lines.append(f"degree of node 0..{t.n - 1}: {per}")
    nonzero = (Ws != 0) & ~torch.eye(t.n, dtype=torch.bool)
    count = nonzero.sum((1, 2)).double().mean().item()
    lines.append(f"per round ({len(Ws)} rounds): mean {count / t.n:.4g} neighbours per node, "
                 f"{count:.4g} nonzero off-diagonal weights" if t.time_varying
                 else f"nonzero off-diagonal weights: {int(count)}")
    self_w, nb_w = Ws.diagonal(dim1=1, dim2=2), Ws[nonzero]
    lines.append(f"self weights: min {f(self_w.min().item())}, max {f(self_w.max().item())}; "
                 + (f"neighbour weights: min {f(nb_w.min().item())}, max {f(nb_w.max().item())}"
                    if len(nb_w) else "no neighbour weights"))
    of_E = " of E[W]" if t.time_varying else ""
    if t.n <= 64 and t.symmetric:
        lines.append(f"eigenvalues{of_E}: {_grouped(spectrum(t.expected()).tolist())}")
    lines += t.notes()
    z = t.zeta
    lines.append(f"zeta{of_E} = {f(z)}, spectral gap 1 - zeta = {f(1 - z)}")
    if t.time_varying:
        lines.append(f"mean per-round zeta over {len(Ws)} rounds (k = 0..{len(Ws) - 1}): "
                     f"{f(sum(zeta(W) for W in Ws) / len(Ws))}")
    if t.time_varying and t.period and t.period > 1:
        product = torch.linalg.multi_dot(list(Ws.flip(0)))
        lines.append(f"one period: zeta(W_{t.period - 1} ... W_0) = {f(zeta(product))}")
    return "\n".join(lines)
