"""Each worker's step times: a fixed-size sample of the distribution, for the record.

Two durations per step, measured by :class:`StepClock` around
:meth:`mpisgd.algorithms.Algorithm.step`:

* ``compute``: from the end of the previous step's communication to the
  ``step()`` call: the forward/backward (and data) the caller did, plus
  ``--straggler``'s delay as drawn (a delay the parameter server cancels
  counts whole: it stands for the computation that was abandoned): what the
  step costs before any communication;
* ``step``: between successive ``step()`` calls: compute plus the previous
  step's communication, the wall time a step takes.

A run of S steps keeps min(S, SIZE) of them, a uniform sample (Vitter's
reservoir, seeded by the worker index so reruns keep the same steps), plus
the count and the exact means; the record stores, per worker,
``/steps/{compute,step}_sample`` (SIZE values, NaN-padded) and
``/steps/{compute,step}_mean``. ``mpisgd report`` prints percentiles from
them and ``mpisgd project`` draws its step times from them.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from . import streams
from .staging import Spans

SIZE = 512      #: values kept per worker and duration


class StepTimes:
    """A reservoir sample of (compute, step) seconds per step, with exact means."""

    def __init__(self, worker: int, size: int = SIZE):
        self.size = size
        self.count = 0
        self.sums = np.zeros(2)
        self.sample = np.full((size, 2), np.nan)
        self._rng = streams.generator(streams.STEP_SAMPLE, worker)

    def add(self, compute: float, step: float) -> None:
        """One step's durations (seconds); ``step`` is NaN for the first step."""
        self.count += 1
        self.sums += (compute, 0.0 if step != step else step)
        if self.count <= self.size:
            self.sample[self.count - 1] = (compute, step)
        else:
            j = self._rng.integers(self.count)
            if j < self.size:
                self.sample[j] = (compute, step)

    def series(self) -> dict:
        """``{"steps/compute_sample": array, ...}`` for :meth:`Algorithm.worker_series`."""
        n = max(self.count, 1)
        return {"steps/compute_sample": self.sample[:, 0].copy(),
                "steps/step_sample": self.sample[:, 1].copy(),
                "steps/compute_mean": self.sums[0] / n,
                "steps/step_mean": self.sums[1] / max(self.count - 1, 1)}

    def state_dict(self) -> dict:
        return {"count": self.count, "sums": self.sums.tolist(), "sample": self.sample.tolist(),
                "rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.sums = state["count"], np.array(state["sums"])
        self.sample = np.array(state["sample"], dtype=float)
        self._rng.bit_generator.state = state["rng"]


class StepClock:
    """Times each step of one worker into :attr:`times`, spending its injected compute
    delay (``stragglers``, or ``None``) first.

    On a GPU a step's compute is the device's time (CUDA events, collected when their
    kernels have run, without a sync): the host only launches the kernels, and reaches
    ``step()`` long before they have run. With a delay, the delay follows the step's
    kernels (one sync), as on a slower GPU.
    """

    def __init__(self, worker: int, device: torch.device, stragglers=None):
        self.times = StepTimes(worker)
        self.device, self.stragglers = device, stragglers
        self._spans = Spans() if device.type == "cuda" else None
        self._left = None          # when the last step() returned (the next compute starts)
        self._entered = None       # when the last step() was called
        self._mark = None          # the event recorded as the last step() returned

    def enter(self, cancellation=None) -> None:
        """At ``step()``'s call: the compute since the last step, and the delay (spent, cut
        short where ``cancellation()`` gives a ``() -> bool`` that says so)."""
        now = time.perf_counter()
        compute = now - self._left if self._left is not None else 0.0
        interval = now - self._entered if self._entered is not None else np.nan
        if self.stragglers is not None:
            if self._spans is not None:
                torch.cuda.current_stream(self.device).synchronize()
                compute = time.perf_counter() - (self._left or now)
            drawn = self.stragglers.compute(compute, record=False)
            self.stragglers.spend(drawn, cancellation() if cancellation is not None else None)
            compute += drawn        # what the step stands for, a cancelled one whole
            self.times.add(compute, interval)
        elif self._spans is not None and self._mark is not None:
            self._spans.close(self._mark, torch.cuda.current_stream(self.device),
                              then=lambda seconds: self.times.add(seconds, interval))
            self._spans.collect()      # the steps whose kernels have run, no sync
        else:
            self.times.add(compute, interval)
        self._entered = now

    def leave(self) -> None:
        """As ``step()`` returns: the next step's compute starts."""
        self._left = time.perf_counter()
        if self._spans is not None:
            self._mark = Spans.mark(torch.cuda.current_stream(self.device))

    def collected(self) -> StepTimes:
        """:attr:`times` with every step's device time in (waits for the device)."""
        if self._spans is not None:
            self._spans.collect(block=True)
        return self.times
