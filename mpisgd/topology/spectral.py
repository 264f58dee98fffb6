"""How fast a mixing matrix mixes: the spectrum, zeta, and the EASGD matrix W_alpha.

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
is {1, 1 - 2 alpha}). Exact averaging is J = 11^T/m (:func:`averaging_matrix`).
"""
from __future__ import annotations

from typing import Callable

import torch

#: Tolerance on row/column sums and symmetry (CSV files carry rounded decimals), + round-off.
TOL = 1e-6 + 1e-12
#: How close to 11^T/m a W must be for an Allreduce of the mean to be its round (round-off).
AVERAGING_TOL = 1e-12


def averaging_matrix(m: int, dtype=torch.float64) -> torch.Tensor:
    """J = 11^T / m: exact averaging over m workers."""
    return torch.full((m, m), 1.0 / m, dtype=dtype)


def elastic_matrix(m: int, alpha: float, dtype=torch.float64) -> torch.Tensor:
    """W_alpha = [[(1-alpha) I_m, alpha 1], [alpha 1^T, 1 - m alpha]] (EASGD, v = 1)."""
    w = torch.zeros(m + 1, m + 1, dtype=dtype)
    w[:m, :m] = (1 - alpha) * torch.eye(m, dtype=dtype)
    w[:m, m] = alpha
    w[m, :m] = alpha
    w[m, m] = 1 - m * alpha
    return w


def is_averaging(W: torch.Tensor) -> bool:
    """Whether ``W`` is exact averaging, 11^T/m (to :data:`AVERAGING_TOL`)."""
    return bool(torch.allclose(W, torch.full_like(W, 1.0 / W.shape[0]), rtol=0, atol=AVERAGING_TOL))


def spectrum(W: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of the symmetric matrix ``W``, largest first (float64)."""
    return torch.linalg.eigvalsh(W.to(torch.float64)).flip(0)


def is_symmetric(W: torch.Tensor) -> bool:
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
    if is_symmetric(W):
        lam = spectrum(W)
        return max(abs(lam[1].item()), abs(lam[-1].item()))
    return torch.linalg.matrix_norm(W - 1.0 / len(W), ord=2).item()


def ternary_min(f: Callable[[float], float], lo: float, hi: float,
                tol: float = 1e-12) -> tuple[float, float]:
    """The minimiser in [lo, hi] of the convex function ``f``, and its value (ternary search)."""
    while hi - lo > tol:
        a, b = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        if f(a) <= f(b):
            hi = b
        else:
            lo = a
    x = (lo + hi) / 2
    return x, f(x)


def best_elastic_alpha(m: int, tol: float = 1e-12) -> tuple[float, float]:
    """The alpha in (0, 2/(m+1)) minimising zeta(W_alpha), found numerically, and that zeta.

    zeta(W_alpha) is a maximum of absolute values of affine functions of
    alpha, hence convex: a ternary search finds its minimum. (The closed
    form is 2/(m+2); this computes it from the eigenvalues instead.)
    """
    return ternary_min(lambda a: zeta(elastic_matrix(m, a)), 0.0, 2.0 / (m + 1), tol)
