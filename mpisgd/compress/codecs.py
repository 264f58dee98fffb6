"""The compressed formats' pure pieces: names, parsing, int8 blocks, top-k (no communication).

Every function here works on tensors it is given and allocates nothing
large; the exchanges that use them are in :mod:`.exchange`.
"""
from __future__ import annotations

import torch

#: The formats of ``--compress`` (besides ``none``): name -> what its argument is.
FORMATS = {"fp16": None, "bf16": None, "int8": None, "topk": "RATIO (0 < RATIO <= 1)",
           "powersgd": "RANK (a positive integer)"}

#: The largest int8 block: one fp32 step per BLOCK elements (1/1024 of the int8 bytes x 4).
BLOCK = 1024

#: The smallest int8 step: the smallest normal float32.
TINY = torch.finfo(torch.float32).tiny

#: fp16's largest finite value: a cast clamps to it (the excess stays in the residual).
FP16_MAX = torch.finfo(torch.float16).max


def parse(value) -> tuple[str, float | None]:
    """``"fp16"``, ``"topk:0.01"``, ... -> ``(format, argument)``; ``ValueError`` saying what
    it must be."""
    must = "none, " + ", ".join(f"{name}:{arg}" if arg else name for name, arg in FORMATS.items())
    must = must.replace(", powersgd", " or powersgd")
    name, _, arg = str(value).partition(":")
    if (name == "none" or (name in FORMATS and FORMATS[name] is None)) and not arg:
        return name, None
    try:
        if name == "topk" and 0 < float(arg) <= 1:
            return name, float(arg)
        if name == "powersgd" and float(arg).is_integer() and int(float(arg)) >= 1:
            return name, int(float(arg))
    except ValueError:
        pass
    raise ValueError(must)


def quantize(x: torch.Tensor, q: torch.Tensor, step: torch.Tensor, work: torch.Tensor) -> None:
    """Block-wise absmax int8 of ``x`` (blocks x b): ``step`` (blocks, fp32) = max|x| / 127
    per block, ``q`` (int8, like x) = round(x / step), so |x - q step| <= step / 2.

    ``work`` (like x, x's dtype; may be x itself) ends holding round(x / step) as floats.
    No clamp is needed: |x| / fl(max|x|/127) <= 127 (1 + 2^-23) < 127.5, since the step
    is at least the smallest normal float32 (a subnormal step would lose that bound;
    below it the block's values are < 127 x 1.2e-38 and q s still within s/2 of them):
    an all-zero block gets that step and q 0. Every large operation has one dtype
    (torch's mixed-dtype kernels are ten times slower on CPU: docs/compression.md).
    """
    hi = torch.amax(x, dim=1)
    lo = torch.amin(x, dim=1)
    torch.maximum(hi, lo.neg_(), out=hi)
    step.copy_(hi).div_(127).clamp_(min=TINY)
    torch.div(x, step.to(x.dtype).unsqueeze(1), out=work)
    work.round_()
    q.copy_(work)


def dequantize(q: torch.Tensor, step: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out`` (blocks x b) <- q step, per block; returns ``out``."""
    out.copy_(q)
    return out.mul_(step.to(out.dtype).unsqueeze(1))


def topk(x: torch.Tensor, k: int, work: torch.Tensor, values: torch.Tensor,
         indices: torch.Tensor) -> None:
    """The ``k`` entries of largest |x|: ``values`` <- x[i], ``indices`` <- i (int64).
    ``work``: like x (holds |x|)."""
    torch.abs(x, out=work)
    torch.topk(work, k, sorted=False, out=(values, indices))
    torch.index_select(x, 0, indices, out=values)
