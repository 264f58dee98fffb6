"""``--optimizer sgd|adam|adamw``: the local optimizer of ``mpisgd train``.

* ``sgd``: ``torch.optim.SGD(lr, momentum, nesterov, weight_decay)`` (L2);
* ``adam``: ``torch.optim.Adam(lr, betas, eps, weight_decay)`` (L2 in the gradient);
* ``adamw``: ``torch.optim.AdamW(lr, betas, eps, weight_decay)``, the decay
  decoupled from the gradient (Loshchilov & Hutter), DiLoCo's inner optimizer.

Adam's moments are optimizer state like SGD's momentum: ``--momentum-policy``
keeps, resets or averages them at a round, checkpoints carry them, and the
parameter-server family's servers run a copy of the optimizer, so with Adam a
stale gradient moves both moments as a fresh one would (nothing discounts its
age but ``--staleness-lr``). ``eamsgd`` is refused with Adam: its update is
its own momentum step (``--delta``) on plain SGD.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw")


def betas(value) -> tuple[float, float]:
    """``"0.9,0.999"`` (or a pair) as two floats in [0, 1); ``ConfigError`` naming ``--betas``."""
    try:
        pair = tuple(float(b) for b in (value.split(",") if isinstance(value, str) else value))
    except (TypeError, ValueError):
        pair = ()
    if len(pair) != 2 or not all(0 <= b < 1 for b in pair):
        raise ConfigError(f"--betas must be two numbers in [0, 1) as B1,B2, got {value!r}")
    return pair


def check(cfg, momentum_given: bool) -> None:
    """Refuse settings the optimizer does not take, naming the flag."""
    if cfg.optimizer not in OPTIMIZERS:
        raise ConfigError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got "
                          f"{cfg.optimizer!r}")
    betas(cfg.betas)
    if not cfg.eps > 0:
        raise ConfigError(f"--eps must be positive, got {cfg.eps!r}")
    if cfg.optimizer == "sgd":
        return
    if momentum_given and cfg.momentum:
        raise ConfigError(f"--momentum applies to --optimizer sgd; {cfg.optimizer}'s moments "
                          f"are set by --betas")
    if cfg.nesterov:
        raise ConfigError(f"--nesterov applies to --optimizer sgd, not {cfg.optimizer}")
    if cfg.algo == "eamsgd":
        raise ConfigError(f"--optimizer {cfg.optimizer} does not combine with --algo eamsgd: "
                          "its update is its own momentum step (--delta) on plain SGD")


def make(cfg, params) -> torch.optim.Optimizer:
    """The optimizer of ``cfg`` (checked) over ``params``."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    kind = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return kind(params, lr=cfg.lr, betas=betas(cfg.betas), eps=cfg.eps,
                weight_decay=cfg.weight_decay)
