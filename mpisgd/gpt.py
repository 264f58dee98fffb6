"""``--model gpt[:LAYERS,WIDTH,HEADS,CONTEXT]``: a small decoder-only transformer on bytes.

In the style of nanoGPT (Karpathy) and GPT-2 (Radford et al. 2019): token
and learned position embeddings of width d, L pre-norm blocks, a final
LayerNorm and a linear head tied to the token embedding. A block is::

    h = h + Proj(CausalSelfAttention(LN(h)))      H heads of width d / H
    h = h + W2 GELU(W1 LN(h))                     W1: d -> 4d, W2: 4d -> d

attention by ``F.scaled_dot_product_attention(is_causal=True)`` (position
i sees positions <= i). Weights are N(0, 0.02), the residual projections
N(0, 0.02 / sqrt(2L)) (GPT-2), biases and no dropout. The input is a batch
of byte windows (B x C, int64); the output the logits of every next byte,
B x C x 256, trained with cross-entropy per position (:func:`mpisgd.models.loss`).

Default ``gpt`` = ``gpt:2,128,4,64``: 0.44M parameters, small enough for a
CPU core's share; DiLoCo's smallest model was 150M.
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

DEFAULT = (2, 128, 4, 64)
FIELDS = ("LAYERS", "WIDTH", "HEADS", "CONTEXT")


def shape(arg: str) -> tuple[int, int, int, int]:
    """``"L,W,H,C"`` (empty: :data:`DEFAULT`) as four integers; ``ValueError`` naming the
    problem (not four positive integers, or WIDTH not a multiple of HEADS)."""
    if not arg:
        return DEFAULT
    try:
        values = tuple(int(v) for v in arg.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or min(values) < 1:
        raise ValueError(f"--model gpt:{arg}: expected four positive integers "
                         f"{','.join(FIELDS)} (e.g. gpt:{','.join(map(str, DEFAULT))})")
    if values[1] % values[2]:
        raise ValueError(f"--model gpt:{arg}: WIDTH {values[1]} must be a multiple of HEADS "
                         f"{values[2]}")
    return values


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, layers: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.up, self.down = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
        for residual in (self.proj, self.down):
            nn.init.normal_(residual.weight, std=0.02 / math.sqrt(2 * layers))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, c, d = h.shape
        q, k, v = (t.view(b, c, self.heads, d // self.heads).transpose(1, 2)
                   for t in self.qkv(self.ln1(h)).split(d, dim=2))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + self.proj(att.transpose(1, 2).reshape(b, c, d))
        return h + self.down(F.gelu(self.up(self.ln2(h))))


class GPT(nn.Module):
    """L blocks of width W with H heads over windows of C bytes; ``vocab`` symbols."""

    def __init__(self, layers: int, width: int, heads: int, context: int, vocab: int = 256):
        super().__init__()
        self.context = context
        self.tokens, self.positions = nn.Embedding(vocab, width), nn.Embedding(context, width)
        for m in (self.tokens, self.positions):
            nn.init.normal_(m.weight, std=0.02)
        blocks = [_Block(width, heads, layers) for _ in range(layers)]
        for block in blocks:
            for m in (block.qkv, block.up):
                nn.init.normal_(m.weight, std=0.02)
            for m in (block.qkv, block.proj, block.up, block.down):
                nn.init.zeros_(m.bias)
        self.blocks = nn.Sequential(*blocks)
        self.ln = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] > self.context or x.is_floating_point():
            raise ValueError(f"model gpt takes windows of at most {self.context} byte indices "
                             f"(B x C integers), got {tuple(x.shape)} {x.dtype}: use --data text:FILE")
        pos = torch.arange(x.shape[1], device=x.device)
        h = self.ln(self.blocks(self.tokens(x) + self.positions(pos)))
        return F.linear(h, self.tokens.weight)        # the head tied to the embedding
