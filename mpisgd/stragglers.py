"""Seeded, recorded delay injection: stragglers and slow links on demand.

Dutta et al. 2018 ("Slow and stale gradients can win the race") model a
worker's step time as a random variable X; the error-runtime trade-off
between synchronous, local and asynchronous SGD depends on its tail. On a
quiet cluster every worker is equally fast, so an experiment adds X on
purpose: each worker sleeps for a sampled extra time after each local step,
and each communication round can be lengthened too.

Compute spec (CLI ``--straggler SPEC``, option ``straggler``): terms joined
by ``+``, at most one distribution term and at most one ``slow:`` term.

* ``exp:MEAN``: X ~ Exp with mean MEAN > 0, density e^{-x/MEAN} / MEAN;
  E[X] = MEAN.
* ``shifted-exp:SHIFT,MEAN``: X = SHIFT + Exp(mean MEAN), SHIFT >= 0,
  MEAN > 0; X >= SHIFT and E[X] = SHIFT + MEAN.
* ``pareto:SHAPE,SCALE``: classic (type I) Pareto, X = SCALE U^{-1/SHAPE}
  with U ~ Uniform(0, 1], so P(X > x) = (SCALE / x)^SHAPE for x >= SCALE;
  E[X] = SHAPE SCALE / (SHAPE - 1) when SHAPE > 1, infinite otherwise.
* ``slow:W=FACTOR,W=FACTOR,...``: the steps of worker W (index >= 0) take
  FACTOR >= 1 times as long. A step that computed for t seconds is padded to
  FACTOR (t + X), so the extra time is (FACTOR - 1)(t + X) + X; other
  workers add X. X = 0 when there is no distribution term.

Examples: ``exp:0.02``, ``shifted-exp:0.01,0.02``, ``pareto:3,0.01``,
``slow:1=4``, ``exp:0.02+slow:0=2,3=4``.

Comm spec (CLI ``--comm-delay``, option ``comm_delay``): ``SECONDS`` (a
constant >= 0; ``0`` means none) or ``exp:MEAN``, added to every round.

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

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import streams
from .errors import OptionError
from .streams import generator

COMPUTE_MUST = ("exp:MEAN, shifted-exp:SHIFT,MEAN, pareto:SHAPE,SCALE or "
                "slow:W=FACTOR,... (joined by +)")
COMM_MUST = "SECONDS >= 0 or exp:MEAN"


def _fmt(x: float) -> str:
    """Shortest text that parses back to ``x``: 3.0 -> '3', 0.02 -> '0.02'."""
    text = repr(float(x))
    return text[:-2] if text.endswith(".0") else text


def _number(text: str) -> float:
    """A finite float from ``text``; ``ValueError`` otherwise."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


# ---- distributions ----------------------------------------------------------

@dataclass(frozen=True)
class Constant:
    """X = ``value`` seconds, always; E[X] = value. Draws nothing."""
    value: float

    def sample(self, rng: np.random.Generator) -> float:
        return self.value

    @property
    def mean(self) -> float:
        return self.value

    def __str__(self) -> str:
        return _fmt(self.value)


@dataclass(frozen=True)
class Exponential:
    """X ~ Exp with mean ``mean`` (rate 1/mean): density e^{-x/mean}/mean, E[X] = mean."""
    mean: float

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.exponential(self.mean))

    def __str__(self) -> str:
        return f"exp:{_fmt(self.mean)}"


@dataclass(frozen=True)
class ShiftedExponential:
    """X = shift + Exp(mean ``scale``): X >= shift, E[X] = shift + scale.

    Spelled ``shifted-exp:SHIFT,MEAN``; ``scale`` is the MEAN of the exponential part.
    """
    shift: float
    scale: float

    def sample(self, rng: np.random.Generator) -> float:
        return self.shift + float(rng.exponential(self.scale))

    @property
    def mean(self) -> float:
        return self.shift + self.scale

    def __str__(self) -> str:
        return f"shifted-exp:{_fmt(self.shift)},{_fmt(self.scale)}"


@dataclass(frozen=True)
class Pareto:
    """Classic Pareto: X = scale U^{-1/shape}, U ~ Uniform(0, 1], so X >= scale.

    P(X > x) = (scale/x)^shape; E[X] = shape scale / (shape - 1) for shape > 1
    (infinite for shape <= 1); Var[X] = scale^2 shape / ((shape-1)^2 (shape-2))
    for shape > 2. (numpy's ``Generator.pareto`` is the Lomax X/scale - 1.)
    """
    shape: float
    scale: float

    def sample(self, rng: np.random.Generator) -> float:
        u = 1.0 - rng.random()                 # (0, 1]
        return self.scale * u ** (-1.0 / self.shape)

    @property
    def mean(self) -> float:
        return self.shape * self.scale / (self.shape - 1) if self.shape > 1 else math.inf

    def __str__(self) -> str:
        return f"pareto:{_fmt(self.shape)},{_fmt(self.scale)}"


Distribution = Exponential | ShiftedExponential | Pareto


# ---- models -----------------------------------------------------------------

@dataclass(frozen=True)
class Compute:
    """A compute-delay model: a distribution for X (or none) and slow workers.

    ``sample(rng)`` draws X (0 without a distribution); ``mean`` is E[X];
    ``factor(w)`` is worker w's slowdown (1 unless named by ``slow:``).
    """
    dist: Distribution | None = None
    slow: tuple[tuple[int, float], ...] = ()     # (worker, factor), sorted by worker

    def sample(self, rng: np.random.Generator) -> float:
        return 0.0 if self.dist is None else self.dist.sample(rng)

    @property
    def mean(self) -> float:
        return 0.0 if self.dist is None else self.dist.mean

    def factor(self, worker: int) -> float:
        return dict(self.slow).get(worker, 1.0)

    def delay(self, worker: int, step_seconds: float, x: float) -> float:
        """Extra seconds for ``worker``: (FACTOR - 1)(step_seconds + x) + x."""
        return (self.factor(worker) - 1.0) * (step_seconds + x) + x

    def __str__(self) -> str:
        terms = [] if self.dist is None else [str(self.dist)]
        if self.slow:
            terms.append("slow:" + ",".join(f"{w}={_fmt(f)}" for w, f in self.slow))
        return "+".join(terms)


@dataclass(frozen=True)
class CommDelay:
    """A communication-delay model: a constant or an exponential per round."""
    dist: Constant | Exponential

    def sample(self, rng: np.random.Generator) -> float:
        return self.dist.sample(rng)

    @property
    def mean(self) -> float:
        return self.dist.mean

    def __str__(self) -> str:
        return str(self.dist)


# ---- parsing ----------------------------------------------------------------

def _args(term: str, name: str, count: int, needs: str) -> list[float]:
    """The ``count`` comma-separated numbers after ``name:``; error says ``needs``."""
    parts = term[len(name) + 1:].split(",")
    try:
        if len(parts) != count:
            raise ValueError(term)
        return [_number(p) for p in parts]
    except ValueError:
        raise OptionError("straggler", f"{needs}, got {term!r}") from None


def _distribution(term: str) -> Distribution:
    if term.startswith("exp:"):
        needs = "exp:MEAN needs MEAN > 0"
        (mean,) = _args(term, "exp", 1, needs)
        if not mean > 0:
            raise OptionError("straggler", f"{needs}, got {term!r}")
        return Exponential(mean)
    if term.startswith("shifted-exp:"):
        needs = "shifted-exp:SHIFT,MEAN needs SHIFT >= 0 and MEAN > 0"
        shift, mean = _args(term, "shifted-exp", 2, needs)
        if not (shift >= 0 and mean > 0):
            raise OptionError("straggler", f"{needs}, got {term!r}")
        return ShiftedExponential(shift, mean)
    needs = "pareto:SHAPE,SCALE needs SHAPE > 0 and SCALE > 0"
    shape, scale = _args(term, "pareto", 2, needs)
    if not (shape > 0 and scale > 0):
        raise OptionError("straggler", f"{needs}, got {term!r}")
    return Pareto(shape, scale)


def _slow(term: str) -> tuple[tuple[int, float], ...]:
    needs = "slow:W=FACTOR,... needs worker indices W >= 0 and FACTOR >= 1"
    out: dict[int, float] = {}
    for item in term[len("slow:"):].split(","):
        worker, sep, factor = item.partition("=")
        try:
            if not sep or not worker.strip().isdigit():
                raise ValueError(item)
            w, f = int(worker), _number(factor)
        except ValueError:
            raise OptionError("straggler", f"{needs}, got {term!r}") from None
        if not f >= 1:
            raise OptionError("straggler", f"{needs}, got {term!r}")
        if w in out:
            raise OptionError("straggler", f"slow: names worker {w} twice, got {term!r}")
        out[w] = f
    return tuple(sorted(out.items()))


def parse_compute(spec: str | None) -> Compute | None:
    """The :class:`Compute` model of ``spec`` (module docstring); None for None or "".

    Raises :class:`~mpisgd.errors.OptionError` ``straggler must be ..., got '...'``.
    """
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return None
    if not isinstance(spec, str):
        raise OptionError("straggler", f"must be {COMPUTE_MUST}, got {spec!r}")
    dist, slow = None, None
    for term in (t.strip() for t in spec.split("+")):
        if term.startswith(("exp:", "shifted-exp:", "pareto:")):
            if dist is not None:
                raise OptionError("straggler", f"takes at most one of exp, shifted-exp, pareto, "
                                 f"got {spec!r}")
            dist = _distribution(term)
        elif term.startswith("slow:"):
            if slow is not None:
                raise OptionError("straggler", f"takes at most one slow: term, got {spec!r}")
            slow = _slow(term)
        else:
            where = f" in {spec!r}" if term != spec.strip() else ""
            raise OptionError("straggler", f"must be {COMPUTE_MUST}, got {term!r}{where}")
    return Compute(dist, slow or ())


def parse_comm(spec: str | None) -> CommDelay | None:
    """The :class:`CommDelay` model of ``spec``: ``SECONDS`` or ``exp:MEAN``; None for None, "", 0.

    Raises :class:`~mpisgd.errors.OptionError` ``comm_delay must be SECONDS >= 0 or exp:MEAN, got '...'``.
    """
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return None
    if not isinstance(spec, str):
        raise OptionError("comm_delay", f"must be {COMM_MUST}, got {spec!r}")
    text = spec.strip()
    try:
        if text.startswith("exp:"):
            mean = _number(text[len("exp:"):])
            if not mean > 0:
                raise ValueError(text)
            return CommDelay(Exponential(mean))
        seconds = _number(text)
        if not seconds >= 0:
            raise ValueError(text)
    except ValueError:
        raise OptionError("comm_delay", f"must be {COMM_MUST}, got {spec!r}") from None
    return None if seconds == 0 else CommDelay(Constant(seconds))


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
