"""When to communicate: the schedule axis of Cooperative SGD.

A schedule answers, after a worker's ``step``-th local step (counted from 1),
whether a communication round follows, and which learning-rate factor the
next step uses.

* :class:`Periodic` (tau): communicate after steps tau, 2 tau, ...; W_k = W
  when (k+1) mod tau == 0 in REFERENCES.md's 0-based k.
* :class:`TimeVarying`: PR-SGD Algorithm 2 (Yu, Yang, Zhu 2019). Epoch
  s = 1, 2, ... has K_s = ceil(K_1 s^p) local steps at rate gamma_s =
  gamma s^q and starts from the average of the previous epoch; the theory's
  exponents are p = 1/3 and q = -2/3.
"""
from __future__ import annotations

import bisect
import math


class Periodic:
    """Communicate after every ``tau``-th local step; constant learning rate.

    Example: ``Periodic(4).communicate(8) is True``.
    """

    def __init__(self, tau: int):
        if not isinstance(tau, int) or tau < 1:
            raise ValueError(f"tau must be a positive integer, got {tau!r}")
        self.tau = tau

    def communicate(self, step: int) -> bool:
        return step % self.tau == 0

    def period(self, step: int) -> int:
        """The communication period in force for local step ``step + 1``."""
        return self.tau

    def lr_scale(self, step: int) -> float:
        """Learning-rate factor for local step ``step + 1``."""
        return 1.0


class TimeVarying:
    """PR-SGD Algorithm 2: epoch lengths K_s = ceil(k1 s^p), rates gamma s^q.

    Args:
        k1: length of the first epoch (the CLI's ``--tau``).
        period_exp: p, growth of the epoch length (theory: 1/3).
        lr_exp: q, decay of the rate (theory: -2/3).

    Example: ``TimeVarying(4, 1/3, -2/3)`` has epochs of 4, 6, 6, 7, 7, ... steps.
    """

    def __init__(self, k1: int, period_exp: float = 1 / 3, lr_exp: float = -2 / 3):
        if not isinstance(k1, int) or k1 < 1:
            raise ValueError(f"tau must be a positive integer, got {k1!r}")
        self.k1, self.period_exp, self.lr_exp = k1, period_exp, lr_exp
        self._ends = []      # _ends[s-1] = last local step of epoch s

    def length(self, s: int) -> int:
        """K_s, the number of local steps of epoch ``s`` (1-based)."""
        return max(1, math.ceil(self.k1 * s ** self.period_exp - 1e-9))

    def epoch(self, step: int) -> int:
        """The epoch (1-based) that local step ``step`` (1-based) belongs to."""
        while not self._ends or self._ends[-1] < step:
            s = len(self._ends) + 1
            self._ends.append((self._ends[-1] if self._ends else 0) + self.length(s))
        return bisect.bisect_left(self._ends, step) + 1

    def communicate(self, step: int) -> bool:
        return self._ends[self.epoch(step) - 1] == step

    def period(self, step: int) -> int:
        return self.length(self.epoch(step + 1))

    def lr_scale(self, step: int) -> float:
        return float(self.epoch(step + 1)) ** self.lr_exp
