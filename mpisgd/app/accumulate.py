"""A step's gradient over N micro-batches (``--accumulate N``): communication after the last.

Micro-batch i of local step t is the worker's batch at position t N + i of
its stream (:class:`~mpisgd.data.WorkerStream`), so the N of them, in
order, are exactly the batch of N times ``--batch-size`` at step t. The
first N - 1 backward passes run inside ``algo.no_sync()`` (sync's bucketed
mean, a group's inner mean: no communication), each of the N losses scaled
by 1/N, so the gradient is the mean over the N B samples; the rounds and the
bytes of a step do not change with N.

The forward pass runs in ``autocast`` (``--precision``,
:func:`mpisgd.precision.autocast`); with fp16 the backward goes through the
algorithm's gradient scaler (:meth:`~mpisgd.algorithms.base.Algorithm.use_scaler`).
"""
from __future__ import annotations

import contextlib

from .. import models


def gradient(model, stream, algo, step: int, n: int = 1, autocast=contextlib.nullcontext):
    """Forward and backward of local step ``step`` over its ``n`` micro-batches, the forward
    inside ``autocast()``; the step's mean loss (a 0-d tensor)."""
    total = None
    for i in range(n):
        x, y = stream.batch(step * n + i)
        with algo.no_sync() if i < n - 1 else contextlib.nullcontext():
            with autocast():
                loss = models.loss(model(x), y)
            part = loss / n if n > 1 else loss
            (algo.scaler.scale(part) if algo.scaler is not None else part).backward()
        total = loss.detach() if total is None else total + loss.detach()
    return total / n if n > 1 else total
