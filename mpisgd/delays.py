"""The injected delays' distributions, and the grammar of their specs.

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

Each distribution draws from a ``numpy.random.Generator`` it is given
(:class:`mpisgd.stragglers.Stragglers` keeps the seeded streams).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import OptionError

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
