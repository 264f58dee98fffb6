"""Whether a run learned: a training loss that stays at its starting value.

A run can end with status ``completed`` and a model at chance: asynchronous
SGD with momentum 0.9 on stale gradients stays at loss 2.306 (ln 10 = 2.303)
for 1,200 updates, test error 0.925. :func:`stalled` is the test the
training driver applies at the end of a run, to say so in its summary and
its record.

The criterion, with L_1 the first step's training loss (the workers' mean),
L_1..L_n the training losses of the n log points (each the mean over the
steps since the previous point), tolerance r (default 1%) and at least
``points`` log points (default 3)::

    stalled  iff  n >= points  and  |L_n - L_1| <= r |L_1|
                  (or, given the loss of a uniform guess c = ln(classes): |L_n - c| <= r c)

The second clause catches a run that starts above chance (a noisy first
batch, a badly scaled initialisation) and collapses onto it. Non-finite
losses are not "stalled" (a divergence is reported as such), nor is a loss
that moved by more than r either way.

Example::

    if stalled(train_losses, first_loss, chance=math.log(data.classes)):
        summary["warning"] = "the training loss stayed at its starting value"
"""
from __future__ import annotations

import math

#: Log points needed before a run can be called stalled.
POINTS = 3
#: Relative distance from the starting loss (or chance) that counts as not having moved.
TOLERANCE = 0.01


def stalled(losses: list[float], first: float, chance: float | None = None,
            points: int = POINTS, tolerance: float = TOLERANCE) -> bool:
    """Whether the training loss stayed at its starting value (the criterion above).

    Args:
        losses: the training loss of each log point so far, in order.
        first: the first step's training loss.
        chance: the loss of a uniform guess (cross-entropy: ``ln(classes)``), or ``None``.
        points: log points needed before a run can be called stalled (default 3).
        tolerance: the relative distance that counts as not having moved (default 0.01).
    """
    if len(losses) < points:
        return False
    last = float(losses[-1])
    if not (math.isfinite(last) and math.isfinite(first)):
        return False
    at = [first] + ([chance] if chance is not None else [])
    return any(abs(last - ref) <= tolerance * abs(ref) for ref in at)
