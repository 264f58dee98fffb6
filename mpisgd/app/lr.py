"""``--lr-schedule``: the local optimizer's learning rate step by step, with linear warmup.

With base rate eta (``--lr``), W warmup steps (``--warmup``), S the run's
steps, T = S - W, t = s - W and m = ``--lr-min`` / eta, the rate of local
step s + 1 (s steps taken) is eta f(s):

* warmup, s < W: f = 1/W + (1 - 1/W) s / W (torch's ``LinearLR`` from 1/W);
* ``constant``: f = 1;
* ``cosine``: f = m + (1 - m) (1 + cos(pi t / T)) / 2 (``CosineAnnealingLR``);
* ``linear``: f = 1 - (1 - m) t / T (``LinearLR`` to m);
* ``step:E1,E2,...``: f = gamma^k, k the milestones passed (``MultiStepLR``), the
  milestones given in epochs and converted to steps (``--lr-gamma``, default 0.1).

It runs as a ``torch.optim.lr_scheduler.LambdaLR`` stepped after every
optimizer step, checkpointed with the run. A step-time schedule of the
algorithm's own (PR-SGD Algorithm 2, ``--schedule time-varying``) sets the
rate itself, and the parameter-server family steps its optimizer on the
server: both refuse a schedule other than ``constant`` (:func:`check`).
"""
from __future__ import annotations

import math

import torch

from ..errors import ConfigError

KINDS = ("constant", "cosine", "linear", "step:E1,E2,...")


def parse(spec: str) -> tuple[str, list[float]]:
    """``"step:30,60"`` -> ``("step", [30.0, 60.0])``; ``ConfigError`` naming ``--lr-schedule``."""
    kind, _, arg = str(spec).partition(":")
    if kind in ("constant", "cosine", "linear") and not arg:
        return kind, []
    if kind == "step" and arg:
        try:
            epochs = [float(e) for e in arg.split(",")]
        except ValueError:
            epochs = []
        if epochs and all(e > 0 and math.isfinite(e) for e in epochs) and epochs == sorted(epochs):
            return kind, epochs
    raise ConfigError(f"--lr-schedule must be one of {', '.join(KINDS)} (epochs > 0, "
                      f"increasing), got {spec!r}")


def factor(kind: str, steps: int, warmup: int = 0, floor: float = 0.0,
           milestones=(), gamma: float = 0.1):
    """``f(s)``: the rate of the step after ``s`` steps over the base rate (module docstring);
    ``milestones`` in steps, ``floor`` = lr_min / lr."""
    span = max(1, steps - warmup)

    def f(s: int) -> float:
        if s < warmup:
            return 1 / warmup + (1 - 1 / warmup) * s / warmup
        t = min(s - warmup, span)
        if kind == "cosine":
            return floor + (1 - floor) * (1 + math.cos(math.pi * t / span)) / 2
        if kind == "linear":
            return 1 - (1 - floor) * t / span
        if kind == "step":
            return gamma ** sum(s >= m for m in milestones)
        return 1.0
    return f


def check(cfg, family_sets_lr: str | None) -> None:
    """Refuse a schedule the algorithm cannot take (``family_sets_lr``: why, or ``None``)."""
    kind, _ = parse(cfg.lr_schedule)
    if (kind != "constant" or cfg.warmup) and family_sets_lr:
        raise ConfigError(f"--lr-schedule {cfg.lr_schedule}"
                          f"{f' with --warmup {cfg.warmup}' if cfg.warmup else ''} does not "
                          f"combine with --algo {cfg.algo}: {family_sets_lr}")


def scheduler(optimizer, cfg, algo, samples: int):
    """The ``LambdaLR`` of ``cfg``'s schedule on ``optimizer`` (its rate now the base) for
    ``algo``'s workers, an epoch being ``samples`` training samples; ``None`` for a constant
    rate without warmup, and on server ranks."""
    kind, epochs = parse(cfg.lr_schedule)
    if (kind == "constant" and not cfg.warmup) or not algo.is_worker:
        return None
    steps_per_epoch = samples / (algo.replicas * cfg.batch_size * cfg.accumulate)
    f = factor(kind, cfg.steps, cfg.warmup, cfg.lr_min / cfg.lr,
               [math.ceil(e * steps_per_epoch) for e in epochs], cfg.lr_gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, f)
