"""Mixing matrices W and how fast they mix: the spectrum and zeta.

Cooperative SGD (Wang & Joshi 2018) bounds the error of A(tau, W, v) by
zeta = max(|lambda_2(W)|, |lambda_{m+v}(W)|), the second-largest eigenvalue
modulus of the symmetric, doubly stochastic W (lambda_1 = 1): the smaller
zeta, the faster the workers agree.

EASGD is A(tau, W_alpha, 1) with
W_alpha = [[(1-alpha) I_m, alpha 1], [alpha 1^T, 1 - m alpha]], whose
spectrum is {1, 1 - alpha (m-1 times), 1 - (m+1) alpha}; zeta is smallest
at alpha = 2/(m+2), where zeta = m/(m+2) (m >= 2; for m = 1 the spectrum
is {1, 1 - 2 alpha}).

``python -m mpisgd topology easgd -m 8 [--alpha A]`` prints them.
"""
from __future__ import annotations

import torch

from .reference import elastic_matrix


def spectrum(W: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of the symmetric matrix ``W``, largest first (float64)."""
    return torch.linalg.eigvalsh(W.to(torch.float64)).flip(0)


def zeta(W: torch.Tensor) -> float:
    """max(|lambda_2|, |lambda_n|): the second-largest eigenvalue modulus."""
    lam = spectrum(W)
    return max(abs(lam[1].item()), abs(lam[-1].item())) if len(lam) > 1 else 0.0


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
