"""Models: softmax regression, MLP, a small CNN, ResNet-20 (CIFAR variant) and a GPT.

``build(name, input_shape, classes)`` makes one; ``gpt[:L,W,H,C]`` is a
decoder-only transformer on byte windows (:mod:`mpisgd.gpt`), the others
classify. :func:`loss` is every model's objective. ResNet-20 follows He et al.
2016, section 4.2: a 3x3 conv with 16 filters, three stages of three basic
blocks with 16, 32 and 64 filters (stride 2 at the start of stages 2 and 3),
global average pooling and a linear classifier; shortcuts are identity, with
option A (zero-padded, subsampled identity) where the shape changes; 0.27M
parameters.
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from . import gpt


def _features(shape) -> int:
    return int(math.prod(shape))


def linear(input_shape, classes) -> nn.Module:
    """Softmax regression (a convex problem)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(_features(input_shape), classes))


def mlp(input_shape, classes, hidden: int = 128) -> nn.Module:
    """Two hidden layers of ``hidden`` ReLU units."""
    return nn.Sequential(nn.Flatten(), nn.Linear(_features(input_shape), hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def cnn(input_shape, classes) -> nn.Module:
    """Two 3x3 conv layers (32, 64 channels), max-pool, and a 128-unit classifier head."""
    if len(input_shape) != 3:
        raise ValueError(f"model cnn needs image inputs (C, H, W), got shape {tuple(input_shape)}")
    c = input_shape[0]
    return nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        nn.Linear(64 * 16, 128), nn.ReLU(), nn.Linear(128, classes))


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = cout - cin
        self.stride = stride

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x
        if self.stride != 1 or self.pad:
            short = x[:, :, ::self.stride, ::self.stride]
            short = F.pad(short, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + short)


class ResNet20(nn.Module):
    """ResNet-20 for 32x32 inputs (works on any image size), option-A shortcuts."""

    def __init__(self, input_shape, classes, blocks: int = 3):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"model resnet20 needs image inputs (C, H, W), got {tuple(input_shape)}")
        self.conv = nn.Conv2d(input_shape[0], 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for stage, cout in enumerate((16, 32, 64)):
            for b in range(blocks):
                layers.append(_Block(cin, cout, 2 if (b == 0 and stage > 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        out = self.layers(F.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


MODELS = {"linear": linear, "mlp": mlp, "cnn": cnn, "resnet20": ResNet20, "gpt": gpt.GPT}


def parse(name: str) -> tuple[str, str]:
    """``(kind, argument)`` of a model name; ``ValueError`` naming the problem."""
    kind, _, arg = name.partition(":")
    if kind not in MODELS:
        raise ValueError(f"--model must be one of {', '.join(MODELS)} (gpt[:L,W,H,C]), "
                         f"got {name!r}")
    if kind == "gpt":
        gpt.shape(arg)
    elif arg:
        raise ValueError(f"--model {kind} takes no arguments, got {name!r}")
    return kind, arg


def context(name: str) -> int | None:
    """The window length a sequence model reads (gpt's C), ``None`` for a classifier."""
    kind, arg = parse(name)
    return gpt.shape(arg)[3] if kind == "gpt" else None


def build(name: str, input_shape, classes: int) -> nn.Module:
    """Model ``name`` for inputs of ``input_shape`` (without the batch dimension)."""
    kind, arg = parse(name)
    if kind == "gpt":
        return gpt.GPT(*gpt.shape(arg), vocab=classes)
    return MODELS[kind](tuple(input_shape), classes)


def loss(out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits ``out`` (B x classes, or B x C x vocab for a sequence) against
    ``y`` (B, or B x C): per sample, or per position of a sequence."""
    return F.cross_entropy(out.flatten(0, -2), y.flatten(), reduction=reduction)
