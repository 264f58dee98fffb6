"""Mixed precision (``--precision fp32|bf16|fp16``): autocast, and fp16's gradient scaler.

* ``fp32``: nothing changes.
* ``bf16``: the forward pass (and so the backward) under
  ``torch.autocast(device, torch.bfloat16)``, on a CPU or a GPU. bf16 has
  fp32's exponent range: no gradient scaling is needed.
* ``fp16``: autocast to float16 on a GPU, and a :class:`Scaler`: the loss is
  multiplied by S before backward, the gradients divided by S before the
  optimizer step, and a step whose gradients are not finite is skipped
  while S halves (it doubles after 2000 finite steps): torch's
  ``GradScaler``. A CPU has no fast float16 kernels: refused there.

Autocast casts inside the operations only: the parameters, their gradients,
the flat buffer and every exchange stay fp32 (``--compress`` is what makes an
exchange smaller). A skipped step is still a step: the algorithm counts it
and takes every round it schedules, so ranks never disagree on the round
count (pytorch#76282). With sync, the gradients are averaged before the
check, so every rank skips the same steps; with local SGD a rank skips its own.
"""
from __future__ import annotations

import contextlib
import warnings

import torch

from .errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check(precision: str, device: str) -> None:
    """``ConfigError`` naming ``--precision`` for an unknown name, or fp16 on a CPU
    (``device``: ``cpu``, ``cuda`` or ``cuda:N``; ``auto`` passes here, planning a study on
    a login node without GPUs, and is checked where a rank resolves it:
    :func:`check_device`, which also gives bf16's warning, once)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device == "cpu":
        _needs_gpu(precision, torch.device("cpu"))


def _needs_gpu(precision: str, device: torch.device) -> None:
    """``ConfigError`` for fp16 on ``device`` if it is not a GPU."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA device (a CPU has no fast float16 "
                          "kernels); on a CPU use --precision bf16")


def cpu_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether this CPU has bf16 instructions (``avx512_bf16`` or ``amx_bf16`` among the
    flags of ``cpuinfo``); ``None`` where the file cannot be read (not Linux)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def check_device(precision: str, device: torch.device) -> None:
    """``ConfigError`` for fp16 on ``device`` if it is not a GPU; a warning for bf16 on a
    CPU without bf16 instructions (autocast emulates them: 10-17 times slower than fp32
    on the 2-core EPYC of docs/benchmarks.md)."""
    if precision == "bf16" and device.type == "cpu" and cpu_bf16() is False:
        warnings.warn("--precision bf16 on a CPU without bf16 instructions (no avx512_bf16 or "
                      "amx_bf16 in /proc/cpuinfo): autocast emulates them, typically 10-17 "
                      "times slower than fp32; use fp32 here, bf16 on a GPU", UserWarning,
                      stacklevel=2)
    _needs_gpu(precision, device)


def autocast(precision: str, device: torch.device):
    """The context the forward pass runs in (a null context for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


class Scaler:
    """torch's ``GradScaler`` as an algorithm steps through it (:meth:`step`), counting
    the steps it skipped (:attr:`skipped`); checkpointed with the algorithm."""

    def __init__(self, device: torch.device | str, **kwargs):
        device = torch.device(device)
        #: The scaler (``init_scale``, ``growth_interval``, ... as ``kwargs`` give them).
        self.scaler = torch.amp.GradScaler(device.type, **kwargs)
        #: Steps skipped for non-finite gradients.
        self.skipped = 0

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss`` times the current scale (backward on this)."""
        return self.scaler.scale(loss)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Unscale the gradients and step ``optimizer`` unless one is not finite; update
        the scale. Returns whether it stepped (the check reads one flag to the host, as
        ``GradScaler.step`` does)."""
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        stepped = self.scaler.get_scale() >= before       # the scale backs off on a skip only
        self.skipped += not stepped
        return stepped

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict(), "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.scaler.load_state_dict(state["scaler"])
        self.skipped = state["skipped"]
