"""Seeded, recorded delay injection: stragglers and slow links on demand.

Dutta et al. 2018 ("Slow and stale gradients can win the race") model a
worker's step time as a random variable X; the error-runtime trade-off
between synchronous, local and asynchronous SGD depends on its tail. On a
quiet cluster every worker is equally fast, so an experiment adds X on
purpose: each worker sleeps for a sampled extra time after each local step,
and each communication round can be lengthened too.

Compute and comm specs (CLI ``--straggler``, ``--comm-delay``): :mod:`mpisgd.delays`.

Determinism: the compute delays come from the stream ``COMPUTE_DELAY``
(seed, worker), the communication delays from ``COMM_DELAY`` (seed, worker),
or from ``COMM_SHARED`` (seed) on every rank when ``shared_comm`` (collective
algorithms, where all ranks must add the same delay to round r); see
:mod:`mpisgd.streams`. Each call draws the same number of values,
so the k-th sample depends only on (seed, worker, k), never on timing or on
the MPI rank a worker happens to run on. (A slow worker's *padding* scales
with its measured step time; its random part does not.)

Recording: :meth:`Stragglers.summary` gives totals per worker; the
algorithms write it into the run record under ``/stragglers/<name>``, one
value per worker, next to ``/ranks/*``. The totals are the seconds actually
spent: a delay cut short (:meth:`Stragglers.spend`, the parameter server's
cancellation abandoning the work) counts what was slept, and
``compute_drawn`` and ``compute_cut`` keep what was drawn and how many were
cut.

Example::

    delays = Stragglers("exp:0.02+slow:1=4", "0.001", seed=0, worker=rank)
    delays.check_workers(workers)
    for x, y in loader:
        start = time.perf_counter()
        optimizer.zero_grad(); loss_fn(model(x), y).backward(); optimizer.step()
        wait(delays.compute(time.perf_counter() - start))
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from . import streams
from .delays import CommDelay, Compute, _fmt, parse_comm, parse_compute
from .errors import OptionError
from .streams import generator

# ---- the per-worker injector -------------------------------------------------

class Stragglers:
    """Sample and record one worker's injected delays.

    Args:
        compute: compute spec (``--straggler``), or None for none.
        comm: communication spec (``--comm-delay``), or None for none.
        seed: the run's seed (integer >= 0).
        worker: this worker's index (integer >= 0), not its MPI rank.
        shared_comm: draw the communication delays from a stream common to all
            workers, so every rank adds the same delay to round r (collectives).

    Each :meth:`compute` / :meth:`comm` call returns the extra seconds and adds
    them to the totals that :meth:`summary` reports; the caller spends them,
    typically with :func:`wait`.
    """

    def __init__(self, compute: str | None, comm: str | None, seed: int, worker: int,
                 shared_comm: bool = False):
        for name, value in (("seed", seed), ("worker", worker)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        self.compute_model = compute if isinstance(compute, Compute) else parse_compute(compute)
        self.comm_model = comm if isinstance(comm, CommDelay) else parse_comm(comm)
        self.seed, self.worker, self.shared_comm = int(seed), int(worker), bool(shared_comm)
        self._factor = self.compute_model.factor(self.worker) if self.compute_model else 1.0
        self._compute_rng = generator(streams.COMPUTE_DELAY, self.seed, self.worker)
        self._comm_rng = (generator(streams.COMM_SHARED, self.seed) if self.shared_comm else
                          generator(streams.COMM_DELAY, self.seed, self.worker))
        self._totals = {"compute": [0.0, 0, 0.0], "comm": [0.0, 0, 0.0]}   # total, count, max
        self._drawn, self._cut = 0.0, 0        # compute delays drawn (seconds), cut short (count)

    @property
    def active(self) -> bool:
        """Whether any delay is configured."""
        return self.compute_model is not None or self.comm_model is not None

    def check_workers(self, workers: int) -> None:
        """``ValueError`` if a ``slow:`` term names a worker index >= ``workers``."""
        for w, f in (self.compute_model.slow if self.compute_model else ()):
            if w >= workers:
                raise OptionError("straggler", f"slow:{w}={_fmt(f)} names worker {w}, but there "
                                 f"are {workers} workers (0..{workers - 1})")

    def _record(self, kind: str, seconds: float) -> float:
        entry = self._totals[kind]
        entry[0] += seconds
        entry[1] += 1
        entry[2] = max(entry[2], seconds)
        return seconds

    def compute(self, step_seconds: float, record: bool = True) -> float:
        """Extra seconds for this step: (FACTOR - 1)(step_seconds + X) + X, recorded unless
        ``record`` is false (then :meth:`spend` records what was slept).

        ``step_seconds`` is the measured compute time of the step (>= 0).
        """
        if not step_seconds >= 0:
            raise ValueError(f"step_seconds must be >= 0, got {step_seconds!r}")
        if self.compute_model is None:
            drawn = 0.0
        else:
            x = self.compute_model.sample(self._compute_rng)
            drawn = (self._factor - 1.0) * (step_seconds + x) + x
        if record:
            self._drawn += drawn
            self._record("compute", drawn)
        return drawn

    def spend(self, drawn: float, interrupted: Callable[[], bool] | None = None) -> float:
        """Sleep a compute delay :meth:`compute` drew (``record=False``), until
        ``interrupted()`` says the work is abandoned; record and return the seconds slept."""
        start = time.perf_counter()
        cut = wait(drawn, interrupted)
        spent = min(drawn, time.perf_counter() - start) if cut else drawn
        self._drawn += drawn
        self._cut += int(cut)
        self._record("compute", spent)
        return spent

    def comm(self) -> float:
        """Extra seconds for one communication round, recorded."""
        if self.comm_model is None:
            return self._record("comm", 0.0)
        return self._record("comm", self.comm_model.sample(self._comm_rng))

    def summary(self) -> dict:
        """Totals so far: ``{compute,comm}_{delay,count,max}`` (seconds spent, calls, seconds),
        ``compute_drawn`` (seconds drawn) and ``compute_cut`` (delays cut short)."""
        out = {}
        for kind, (total, count, largest) in self._totals.items():
            out.update({f"{kind}_delay": total, f"{kind}_count": count, f"{kind}_max": largest})
        out.update(compute_drawn=self._drawn, compute_cut=self._cut)
        return out

    def state_dict(self) -> dict:
        """The random streams' positions and the totals so far, for a checkpoint."""
        return {"compute_rng": self._compute_rng.bit_generator.state,
                "comm_rng": self._comm_rng.bit_generator.state,
                "totals": {k: list(v) for k, v in self._totals.items()},
                "drawn": [self._drawn, self._cut]}

    def load_state_dict(self, state: dict) -> None:
        self._compute_rng.bit_generator.state = state["compute_rng"]
        self._comm_rng.bit_generator.state = state["comm_rng"]
        self._totals = {k: list(v) for k, v in state["totals"].items()}
        self._drawn, self._cut = state.get("drawn", [self._totals["compute"][0], 0])

    def __repr__(self) -> str:
        return (f"Stragglers(compute={str(self.compute_model or '')!r}, "
                f"comm={str(self.comm_model or '')!r}, seed={self.seed}, worker={self.worker}, "
                f"shared_comm={self.shared_comm})")


def wait(seconds: float, interrupted: Callable[[], bool] | None = None,
         poll: float = 0.0005) -> bool:
    """Spend ``seconds`` asleep; True if ``interrupted()`` cut it short.

    Without ``interrupted`` this is ``time.sleep(seconds)``. With it, sleeps in
    slices of at most ``poll`` seconds against a ``time.perf_counter`` deadline,
    calling ``interrupted()`` before each slice (at least once, even for
    ``seconds <= 0``) and returning True as soon as it does.
    """
    if interrupted is None:
        if seconds > 0:
            time.sleep(seconds)
        return False
    if not poll > 0:
        raise ValueError(f"poll must be a positive number, got {poll!r}")
    deadline = time.perf_counter() + (seconds if seconds > 0 else 0.0)
    while True:
        if interrupted():
            return True
        left = deadline - time.perf_counter()
        if left <= 0:
            return False
        time.sleep(min(poll, left))
