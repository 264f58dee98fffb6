"""A window of step losses: their sum, count, first, and the first non-finite one.

:meth:`LossWindow.add` keeps a reference to the step's (detached) loss
tensor: no kernel and no host synchronisation per step (cheaper than summing
into an accumulator). :meth:`LossWindow.take` stacks them (one kernel, one
copy to the host) and starts the next window. The training driver keeps one
per log interval (:mod:`mpisgd.app.points`), a schedule that adapts to the
loss one per round (:mod:`mpisgd.algorithms.scheduled`, AdaComm).
"""
from __future__ import annotations

import math

import torch


class LossWindow:
    """The losses since the last :meth:`take`; ``device``: where a resumed window's go."""

    def __init__(self, device=None):
        self.device = device
        self.losses: list[torch.Tensor] = []
        self.first_step = 0        # the local step before losses[0]

    def add(self, loss) -> None:
        """A step's loss: a 0-d tensor (kept, detached) or a number."""
        self.losses.append(loss.detach() if torch.is_tensor(loss)
                           else torch.tensor(float(loss), dtype=torch.float64))

    def take(self, next_step: int = 0) -> tuple[float, int, int, float]:
        """``(sum, count, bad, first)`` of the window: ``bad`` the local step of its first
        non-finite loss (1-based) or 0, ``first`` its first loss (0.0 if empty); the next
        window starts after local step ``next_step``."""
        n = len(self.losses)
        total, bad, first = 0.0, 0, 0.0
        if n:
            losses = self._stacked()
            total, first = losses.sum().item(), losses[0].item()
            if not math.isfinite(total):
                bad = self.first_step + int((~torch.isfinite(losses)).nonzero()[0].item()) + 1
        self.losses, self.first_step = [], next_step
        return total, n, bad, first

    def _stacked(self) -> torch.Tensor:
        """The window's losses as one float64 host tensor (one copy from the device)."""
        if len({t.device for t in self.losses}) == 1:
            return torch.stack(self.losses).double().cpu()    # stack promotes dtypes
        return torch.stack([t.double().cpu() for t in self.losses])   # numbers beside device tensors

    def state_dict(self) -> dict:
        losses = self._stacked() if self.losses else torch.zeros(0, dtype=torch.float64)
        return {"losses": losses, "first_step": self.first_step}

    def load_state_dict(self, state: dict) -> None:
        self.losses = list(state["losses"].to(self.device).unbind())
        self.first_step = state["first_step"]
