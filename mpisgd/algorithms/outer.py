"""The outer optimizer: a torch optimizer stepping an anchor on a round's pseudo-gradient.

DiLoCo (Douillard et al. 2023) and SlowMo (Wang et al. 2020) run an inner
algorithm (local SGD, gossip, EASGD) for a round, then treat what the round
moved as a gradient. With x the tensor a round averages into (the workers'
parameters; EASGD's centre) and x_a its value after the previous round (the
anchor):

    Delta  = x_a - x                      (the round's pseudo-gradient; x: after the round)
    x_a   <- OuterOpt(x_a, Delta)         (one step of SGD, Nesterov SGD or Adam)
    x     <- x_a

``--outer sgd --outer-lr 1 --outer-momentum 0`` gives x_a - Delta = x: the
plain algorithm. ``nesterov`` with lr 0.7 and momentum 0.9 is DiLoCo's
setting; ``sgd`` with momentum is SlowMo's: its slow momentum
u <- beta u + Delta / gamma and x_a <- x_a - alpha gamma u are torch's
buf <- beta buf + Delta, x_a <- x_a - alpha buf (buf = gamma u), so SlowMo's
(alpha, beta) are ``--outer-lr alpha --outer-momentum beta`` for any inner
rate gamma. ``adam`` takes ``outer_momentum`` as beta1 (beta2 0.999).

A centre that receives pushes one at a time (async EASGD's, c += delta)
steps with the pseudo-gradient -delta on c itself (:meth:`Outer.add`); with
SGD at lr 1 and no momentum that is c + delta exactly.

Every worker of an averaging round holds the same x and x_a, so the outer
states stay equal without communication; a gossip worker's is its own.
"""
from __future__ import annotations

import torch

KINDS = ("sgd", "nesterov", "adam")


def optimizer(kind: str, lr: float, momentum: float, params) -> torch.optim.Optimizer:
    """The outer optimizer ``kind`` (:data:`KINDS`) on ``params``."""
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(momentum, 0.999))
    return torch.optim.SGD(params, lr=lr, momentum=momentum,
                           nesterov=kind == "nesterov" and momentum > 0)


class Outer:
    """The outer step on ``x`` (a flat tensor, written in place).

    ``anchor``: where x_a lives; default a copy of ``x`` now (a round's
    average then arrives in ``x``: :meth:`step`); ``x`` itself for a centre
    updated by pushes (:meth:`add`).
    """

    def __init__(self, x: torch.Tensor, kind: str, lr: float, momentum: float,
                 anchor: torch.Tensor | None = None):
        self.x = x
        self.anchor = x.detach().clone() if anchor is None else anchor
        self.optimizer = optimizer(kind, lr, momentum, [self.anchor])
        self._delta = torch.empty_like(x)

    @torch.no_grad()
    def descend(self, pseudo_gradient: torch.Tensor) -> None:
        """x_a <- OuterOpt(x_a, pseudo_gradient) (x untouched)."""
        self.anchor.grad = pseudo_gradient
        self.optimizer.step()
        self.anchor.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """After a round: Delta = x_a - x, x_a <- OuterOpt(x_a, Delta), x <- x_a."""
        torch.sub(self.anchor, self.x, out=self._delta)
        self.descend(self._delta)
        self.x.copy_(self.anchor)

    @torch.no_grad()
    def add(self, delta: torch.Tensor) -> None:
        """A push to a centre held in the anchor: x_a <- OuterOpt(x_a, -delta)."""
        torch.neg(delta, out=self._delta)
        self.descend(self._delta)

    def state_dict(self) -> dict:
        return {"anchor": self.anchor, "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.anchor.copy_(state["anchor"])
        self.optimizer.load_state_dict(state["optimizer"])


def make(opts: dict, x: torch.Tensor | None, anchor: torch.Tensor | None = None) -> Outer | None:
    """The outer step of resolved options ``opts`` on ``x``; ``None`` without ``--outer``
    (or where this rank holds no ``x``: a centre on another rank)."""
    kind = opts.get("outer", "none")
    if kind == "none" or x is None:
        return None
    return Outer(x, kind, opts["outer_lr"], opts["outer_momentum"], anchor)
