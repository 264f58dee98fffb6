"""The text of ``mpisgd topology``: degrees, weights, spectrum and zeta of a topology."""
from __future__ import annotations

import torch

from .spectral import best_elastic_alpha, elastic_matrix, spectrum, zeta
from .static import Topology


def grouped(values, digits: int = 10) -> str:
    """``1 (x1), 0.75 (x3), -0.25 (x1)``: equal eigenvalues counted once."""
    out: list[list] = []
    for v in (round(x, digits) + 0.0 for x in values):
        if out and out[-1][0] == v:
            out[-1][1] += 1
        else:
            out.append([v, 1])
    return ", ".join(f"{v:.6g} (x{n})" for v, n in out)


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
        lines.append(f"eigenvalues{of_E}: {grouped(spectrum(t.expected()).tolist())}")
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
        f"eigenvalues: {grouped(spectrum(W).tolist())}",
        f"zeta = {zeta(W):.6g}",
        f"alpha minimising zeta: {best:.6f} (2/(m+2) = {2 / (m + 2):.6f}), "
        f"zeta = {best_zeta:.6f} (m/(m+2) = {m / (m + 2):.6f})",
    ])
