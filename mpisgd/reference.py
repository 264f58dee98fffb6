"""The dense single-process oracle for Cooperative SGD, A(tau, W, v).

The state is the stacked matrix X_k = [x_1 .. x_m, z_1 .. z_v] (d x (m+v)),
one column per worker and per auxiliary variable (Wang & Joshi 2018).
Each iteration

    X_{k+1} = (X_k - eta_k G_k) W_k,    W_k = W if (k+1) mod tau == 0 else I,

where G_k holds the workers' stochastic gradients and zeros in the v
auxiliary columns. Fully synchronous SGD is A(1, J, 0) with J = 11^T/m,
periodic averaging (local SGD, PR-SGD) A(tau, J, 0), D-PSGD A(1, W, 0) for a
sparse doubly stochastic W, EASGD A(tau, W_alpha, 1).

With an outer optimizer (DiLoCo, SlowMo; ``outer=``) each communication
iteration is followed by an outer step on the chosen columns (the workers';
EASGD's centre), from their anchor A (their value after the previous one):

    D = A - X_{k+1},   A <- A - lr u(D),   X_{k+1} <- A

u(D) = b, b <- mu b + D (sgd); D + mu b after that update (nesterov); Adam's
m_hat / (sqrt(v_hat) + 1e-8) with betas (mu, 0.999) (adam). Written out
here, not taken from torch.

With groups (``group=G``: each of the m workers a group of G ranks,
:mod:`mpisgd.groups`) the columns are the m G replicas, group g's being
gG .. gG + G - 1. With B = I_m (x) J_G (J_G = 11^T/G) the group's mean,

    G_k <- G_k B                          (group_tau = 1: gradients averaged in the group)
    X <- X B  every group_tau steps        (group_tau > 1: hierarchical local SGD)

and a round mixes with W expanded to the replicas (:func:`expand`): each
group's mean goes where W sends its worker,
M = [[W_ww (x) J_G, W_wa (x) 1_G / G], [W_aw (x) 1_G^T, W_aa]], so that
B M = M: a round starts from the group's average.

Tests run an algorithm under mpiexec and compare each rank's parameters with
its column of this oracle, computed in float64 on the same gradient stream.
"""
from __future__ import annotations

from typing import Callable

import torch

from .topology.spectral import averaging_matrix, elastic_matrix

__all__ = ["averaging_matrix", "elastic_matrix", "cooperative", "expand"]


def expand(W: torch.Tensor, group: int, v: int = 0) -> torch.Tensor:
    """W over m workers and v auxiliaries, expanded to m G replicas in groups of G
    (the module's M)."""
    m = W.shape[0] - v
    W = W.to(torch.float64).contiguous()
    J = torch.full((group, group), 1.0 / group, dtype=W.dtype)
    col = torch.full((group, 1), 1.0 / group, dtype=W.dtype)
    top = torch.cat([torch.kron(W[:m, :m], J), torch.kron(W[:m, m:], col)], 1)
    bottom = torch.cat([torch.kron(W[m:, :m], torch.ones(1, group, dtype=W.dtype)), W[m:, m:]], 1)
    return torch.cat([top, bottom], 0)


def cooperative(x0: torch.Tensor, grad: Callable[[int, torch.Tensor], torch.Tensor],
                eta: float | Callable[[int], float], W: torch.Tensor | Callable[[int], torch.Tensor],
                steps: int, tau: int | None = 1, communicate: Callable[[int], bool] | None = None,
                v: int = 0, trace: bool = False, simultaneous: bool = False,
                outer: tuple[str, float, float] | None = None, outer_columns: slice | None = None,
                group: int = 1, group_tau: int = 1, step_outer=None):
    """Run A(tau, W, v) for ``steps`` iterations from ``x0``.

    ``simultaneous=True`` mixes and takes the gradient step from the same
    X, as synchronous EASGD (Zhang et al. 2015) does:
    X_{k+1} = X_k W_k - eta_k G_k (gradients taken at X_k as always).

    Args:
        x0: the d x (m+v) initial stack (or a length-d vector, copied to every column).
        grad: ``grad(k, X_workers) -> G`` for iteration k (0-based), both d x m.
        eta: the learning rate, or ``eta(k)``.
        W: the (m+v) x (m+v) mixing matrix, or ``W(k)`` for a time-varying one.
        tau: communicate when (k+1) mod tau == 0 (ignored if ``communicate`` given).
        communicate: ``communicate(k+1) -> bool``, e.g. a schedule's method.
        v: number of auxiliary columns (centre variables).
        trace: also return the list of X after every iteration.
        outer: ``(kind, lr, momentum)``, kind ``sgd``, ``nesterov`` or ``adam``: the outer
            step after each communication (see the module).
        outer_columns: the columns it steps (default the m workers').
        group: G, the ranks per worker (columns are then the m G replicas; W stays m + v).
        group_tau: with groups, 1 (gradients averaged in a group) or the steps between
            parameter averagings in a group.
        step_outer: ``step_outer(k+1) -> bool``, whether a communication step takes the outer
            step (default: every one).

    Returns:
        X after ``steps`` iterations (and the trace if asked).
    """
    if group > 1:
        return _grouped(x0, grad, eta, W, steps, tau, communicate, v, trace, simultaneous,
                        outer, outer_columns, group, group_tau)
    w0 = W(0) if callable(W) else W
    n = w0.shape[0]
    X = x0.to(torch.float64).clone()
    if X.dim() == 1:
        X = X[:, None].repeat(1, n)
    m = n - v
    if communicate is None:
        communicate = lambda k1: k1 % tau == 0  # noqa: E731
    history = []
    cols = slice(0, m) if outer_columns is None else outer_columns
    step = _outer(outer, X[:, cols]) if outer is not None else None
    for k in range(steps):
        G = torch.zeros_like(X)
        G[:, :m] = grad(k, X[:, :m])
        rate = eta(k) if callable(eta) else eta
        mix = (W(k) if callable(W) else W).to(X.dtype) if communicate(k + 1) else None
        if simultaneous:
            X = (X if mix is None else X @ mix) - rate * G
        else:
            X = X - rate * G
            X = X if mix is None else X @ mix
        if step is not None and mix is not None and (step_outer is None or step_outer(k + 1)):
            X[:, cols] = step(X[:, cols])
        if trace:
            history.append(X.clone())
    return (X, history) if trace else X


def _grouped(x0, grad, eta, W, steps, tau, communicate, v, trace, simultaneous, outer,
             outer_columns, group, group_tau):
    """:func:`cooperative` with workers in groups (the module's composition)."""
    w0 = W(0) if callable(W) else W
    m = w0.shape[0] - v
    B = torch.kron(torch.eye(m, dtype=torch.float64),
                   torch.full((group, group), 1.0 / group, dtype=torch.float64))
    if communicate is None:
        communicate = lambda k1: k1 % tau == 0  # noqa: E731

    def mean_grad(k, X):
        G = grad(k, X)
        return G @ B if group_tau == 1 else G

    def inside(k1):                  # a step that averages inside the groups, without a round
        return group_tau > 1 and k1 % group_tau == 0 and not communicate(k1)

    def mixing(k):                   # identity with the groups' averages at inside-only steps
        if inside(k + 1):
            n = m * group + v
            out = torch.eye(n, dtype=torch.float64)
            out[:m * group, :m * group] = B
            return out
        return expand((W(k) if callable(W) else W), group, v)

    return cooperative(x0, mean_grad, eta, mixing, steps, communicate=lambda k1: communicate(k1)
                       or inside(k1), v=v, trace=trace, simultaneous=simultaneous, outer=outer,
                       outer_columns=outer_columns if outer_columns is not None or outer is None
                       else slice(0, m * group), step_outer=lambda k1: communicate(k1))


def _outer(outer: tuple[str, float, float], X0: torch.Tensor):
    """``X -> A``: the outer step of ``outer`` on the anchor A (from ``X0``), written out."""
    kind, lr, mu = outer
    state = {"A": X0.clone(), "b": torch.zeros_like(X0), "m": torch.zeros_like(X0),
             "v": torch.zeros_like(X0), "t": 0}

    def step(X: torch.Tensor) -> torch.Tensor:
        A = state["A"]
        D = A - X
        if kind == "adam":
            state["t"] += 1
            t = state["t"]
            state["m"] = mu * state["m"] + (1 - mu) * D
            state["v"] = 0.999 * state["v"] + (1 - 0.999) * D * D
            m_hat = state["m"] / (1 - mu ** t)
            v_hat = state["v"] / (1 - 0.999 ** t)
            A -= lr * m_hat / (v_hat.sqrt() + 1e-8)
        else:
            state["b"] = mu * state["b"] + D
            A -= lr * (D + mu * state["b"] if kind == "nesterov" else state["b"])
        return A.clone()
    return step


def streaming(x0: torch.Tensor, grad: Callable[[int, torch.Tensor], torch.Tensor], eta: float,
              m: int, steps: int, tau: int, fragments: int = 1, delay: int = 0,
              alpha: float = 0.0, outer: tuple[str, float, float] | None = None,
              trace: bool = False, group: int = 1):
    """Streaming local SGD / Streaming DiLoCo on m workers from ``x0`` (length d), dense.

    Fragment f (rows floor(f d/F) .. floor((f+1) d/F) of X) is averaged at the steps
    s > 0 with s = floor(f tau/F) (mod tau); the mean of the workers' rows at s,
    xbar, lands D = ``delay`` steps later: its anchor A <- xbar (or the outer step on
    A - xbar), and every worker's rows <- alpha rows + (1 - alpha) A. Returns X (d x m)
    after ``steps`` iterations (and the trace if asked).

    ``group`` G > 1: the m columns are replicas in groups of G (their gradients averaged
    in the group every step), and fragment f is the union of fragment f of each of the G
    near-equal blocks of the rows (the first d mod G one row longer): each rank of a
    group streams its block.
    """
    X = x0.to(torch.float64)[:, None].repeat(1, m)
    d = X.shape[0]
    if group > 1:
        base, extra = divmod(d, group)
        starts = [l * base + min(l, extra) for l in range(group + 1)]
        blocks = list(zip(starts[:-1], starts[1:]))
        rows = [torch.cat([torch.arange(lo + f * (hi - lo) // fragments,
                                        lo + (f + 1) * (hi - lo) // fragments)
                           for lo, hi in blocks]) for f in range(fragments)]
        mean_in_group = torch.kron(torch.eye(m // group, dtype=torch.float64),
                                   torch.full((group, group), 1.0 / group, dtype=torch.float64))
        per_replica = grad
        grad = lambda k, X: per_replica(k, X) @ mean_in_group  # noqa: E731
    else:
        rows = [torch.arange(f * d // fragments, (f + 1) * d // fragments)
                for f in range(fragments)]
    offsets = [f * tau // fragments for f in range(fragments)]
    anchors = [X[rows[f], 0].clone() for f in range(fragments)]
    steppers = [_outer(outer, a) if outer is not None else None for a in anchors]
    pending: dict[int, tuple[int, torch.Tensor]] = {}
    history = []

    def land(f: int, mean: torch.Tensor) -> None:
        anchors[f] = steppers[f](mean) if steppers[f] is not None else mean
        X[rows[f]] = alpha * X[rows[f]] + (1 - alpha) * anchors[f][:, None]

    for k in range(steps):
        s = k + 1
        X = X - eta * grad(k, X)
        for f in sorted(pending):
            if pending[f][0] + delay <= s:
                land(f, pending.pop(f)[1])
        for f in range(fragments):
            if s % tau == offsets[f]:
                mean = X[rows[f]].mean(1)
                if delay:
                    pending[f] = (s, mean)
                else:
                    land(f, mean)
        if trace:
            history.append(X.clone())
    return (X, history) if trace else X
