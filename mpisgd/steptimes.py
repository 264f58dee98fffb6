"""Each worker's step times: a fixed-size sample of the distribution, for the record.

Two durations per step, measured in :meth:`mpisgd.algorithms.Algorithm.step`:

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

import numpy as np

from . import streams

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
