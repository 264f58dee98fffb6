"""The topology interface: a mixing matrix W_k per gossip round, and the static one."""
from __future__ import annotations

import torch

from .spectral import is_symmetric, zeta


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
        self.symmetric = is_symmetric(self.W)

    def matrix(self, k: int) -> torch.Tensor:
        return self.W
