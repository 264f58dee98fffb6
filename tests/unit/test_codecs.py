"""The compression codecs' pure pieces (no communication) and the format parser.

Bounds, per element: int8 rounds a / s to the nearest integer, s the block's
max|a| / 127 in fp32, so |a - D(C(a))| <= s/2 = max|a|/254 (plus the fp32
rounding of s, 2^-24 relative, and of q s); fp16 rounds to 11 significant
bits, |a - fp16(a)| <= 2^-11 |a| for normal numbers; bf16 to 8, 2^-8 |a|.
"""
import math

import pytest
import torch

from mpisgd.algorithms.options import COMPRESS, OptionError
from mpisgd.compress import parse as parse_compress
from mpisgd.app.report import paid
from mpisgd.compress import TINY, dequantize, quantize, topk


@pytest.mark.parametrize("text, expected", [
    ("none", ("none", None)), ("fp16", ("fp16", None)), ("bf16", ("bf16", None)),
    ("int8", ("int8", None)), ("topk:1", ("topk", 1.0)), ("topk:0.01", ("topk", 0.01)),
    ("topk:1e-3", ("topk", 1e-3)), ("powersgd:1", ("powersgd", 1)),
    ("powersgd:4.0", ("powersgd", 4)),
])
def test_formats_parse(text, expected):
    assert parse_compress(text) == expected


@pytest.mark.parametrize("text", ["", "fp32", "int8:2", "topk", "topk:", "topk:0",
                                  "topk:1.5", "topk:-0.1", "topk:x", "powersgd", "powersgd:0",
                                  "powersgd:2.5", "powersgd:-1", "TOPK:0.1"])
def test_bad_formats_are_refused_naming_the_option(text):
    with pytest.raises(ValueError):
        parse_compress(text)
    option = {o.name: o for o in COMPRESS}["compress"]
    with pytest.raises(OptionError, match="compress must be"):
        option.resolve(text)


def blocks(seed=0, rows=16, b=64, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, b, generator=g, dtype=dtype)
    x *= torch.logspace(-3, 3, rows, dtype=dtype).unsqueeze(1)     # blocks of every scale
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_int8_error_is_at_most_half_a_step(dtype):
    x = blocks(dtype=dtype)
    x[3] = 0.0                                 # an all-zero block: the smallest step, exact
    q = torch.empty(x.shape, dtype=torch.int8)
    step = torch.empty(x.shape[0], dtype=torch.float32)
    work = torch.empty_like(x)
    quantize(x, q, step, work)
    absmax = x.abs().amax(dim=1)
    assert torch.allclose(step.double(), (absmax.double() / 127).clamp(min=TINY), rtol=2 ** -23,
                          atol=0)
    assert step[3] == TINY
    assert int(q.abs().max()) == 127 and int(q.abs().amax(dim=1).min()) in (0, 127)
    assert torch.equal(work, q.to(dtype))
    out = dequantize(q, step, torch.empty_like(x))
    bound = absmax / 254 * (1 + 1e-6)
    assert ((x - out).abs() <= bound.unsqueeze(1)).all()
    assert torch.equal(out[3], torch.zeros_like(out[3]))


def test_int8_in_place_work_and_extremes():
    x = torch.tensor([[1.0, -1.0, 0.5, 0.25], [3e38, -3e38, 1.0, 0.0], [1e-30, 0, 0, -1e-30]])
    expected = x.clone()
    q = torch.empty(x.shape, dtype=torch.int8)
    step = torch.empty(3)
    quantize(x, q, step, x)                            # work = x itself
    assert q.tolist() == [[127, -127, 64, 32], [127, -127, 0, 0], [127, 0, 0, -127]]
    out = dequantize(q, step, torch.empty(3, 4))
    assert torch.isfinite(out).all()
    assert ((expected - out).abs() <= expected.abs().amax(1, keepdim=True) / 254 * 1.000001).all()


def test_int8_subnormal_blocks_keep_their_sign():
    x = torch.tensor([[2.5e-43, -1e-44, 0.0, 1e-45]])
    q, step = torch.empty(x.shape, dtype=torch.int8), torch.empty(1)
    quantize(x, q, step, torch.empty_like(x))
    assert step[0] == TINY and q.tolist() == [[0, 0, 0, 0]]
    x = torch.tensor([[1e-37, -5e-38, 2e-38, 0.0]])      # normal values, step near TINY
    quantize(x, q, step, torch.empty_like(x))
    assert q[0, 0] > 0 and q[0, 1] < 0 and q.abs().max() <= 127


def test_topk_picks_the_largest_magnitudes():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1000, generator=g, dtype=torch.float64)
    k = 37
    values = torch.empty(k, dtype=x.dtype)
    indices = torch.empty(k, dtype=torch.int64)
    topk(x, k, torch.empty_like(x), values, indices)
    assert torch.equal(values, x[indices])                    # signed values
    assert len(set(indices.tolist())) == k
    assert x[indices].abs().min() >= x.abs().sort(descending=True).values[k - 1]
    assert set(indices.tolist()) == set(x.abs().argsort(descending=True)[:k].tolist())


def test_paid_says_whether_it_paid():
    figures = {"compress/bytes": 26.0, "compress/dense_bytes": 100.0, "compress/rounds": 10.0,
               "compress/codec_seconds": 0.12, "compress/exchange_seconds": 1.2,
               "compress/quiet_seconds": 0.41, "compress/dense_seconds": 0.98}
    assert paid(figures, "int8") == (
        "compression int8: 0.26x the bytes; exchange 0.41 s + codec 0.12 s against 0.98 s "
        "dense (measured alike; 1.20 s of exchange and waits in the run): paid, 0.45 s saved")
    slow = dict(figures, **{"compress/codec_seconds": [0.6, 0.8]})       # per worker: mean
    assert paid(slow, "int8").endswith("in the run): did not pay, 0.13 s lost")
    assert "not measured" in paid(dict(figures, **{"compress/dense_seconds": 0.0}), "fp16")
    assert paid(dict(figures, **{"compress/rounds": 0}), "fp16") is None
    assert paid({}, "fp16") is None
    assert math.isclose(float(paid(figures, "x").split("x the")[0].split()[-1]), 0.26)
