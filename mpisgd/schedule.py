"""When to communicate: the schedule axis of Cooperative SGD.

A schedule answers, after a worker's ``step``-th local step (counted from 1)
at time ``now`` (seconds, the algorithm's clock), whether a communication
round follows, and which learning-rate factor the next step uses. After
each round the algorithm calls :meth:`round_done`, with what the workers
reported about the round (:class:`RoundStats`) when the schedule
``needs_stats``; every worker then holds the same figures, so every worker
takes the same decision.

* :class:`Periodic` (tau): communicate after steps tau, 2 tau, ...; W_k = W
  when (k+1) mod tau == 0 in REFERENCES.md's 0-based k.
* :class:`TimeVarying`: PR-SGD Algorithm 2 (Yu, Yang, Zhu 2019). Epoch
  s = 1, 2, ... has K_s = ceil(K_1 s^p) local steps at rate gamma_s =
  gamma s^q and starts from the average of the previous epoch; the theory's
  exponents are p = 1/3 and q = -2/3.
* :class:`AdaComm` (Wang & Joshi 2019): wall-clock intervals of T0 seconds;
  at the first round after l T0 the period becomes
  tau_l = min(tau_{l-1}, ceil(sqrt(F_l / F_0) (eta_l / eta_0)^c tau_0)).
* :class:`PostLocal` (Lin et al. 2020, "Don't use large mini-batches, use
  local SGD"): a round after every step up to step t' (``local_after``),
  then every tau steps counted from t': post-local SGD (torch's
  ``post_localSGD_hook`` with ``PeriodicModelAverager`` averages the
  gradients up to t' and starts its periods one step later). Averaging x_i after every
  step of SGD (momentum, Nesterov and weight decay included, the
  optimizer's state kept per worker) is mini-batch SGD on the mean
  gradient: the update is linear in the gradients and the momenta.
* :class:`Budget`: PR-SGD Algorithm 3 (heterogeneous workers): a round
  lasts a fixed budget of seconds and each worker takes as many local steps
  as fit, so fast workers take more instead of waiting.
"""
from __future__ import annotations

import bisect
import copy
import math

import numpy as np

from .errors import OptionError

#: What each worker reports about a round: one row of :class:`RoundStats`.
STAT_FIELDS = ("loss_sum", "loss_count", "first_loss", "steps", "seconds", "elapsed")


#: Round-off above an integer that :func:`ceil_tol` ignores: k1 s^p and the AdaComm rule
#: are computed in floating point, and a product that is an integer in exact arithmetic
#: must not gain a step from its last bit.
CEIL_TOL = 1e-9


def ceil_tol(x: float) -> int:
    """ceil(x), with x within :data:`CEIL_TOL` above an integer taken as that integer."""
    return math.ceil(x - CEIL_TOL)


class RoundStats:
    """The workers' reports on one round, gathered on every worker (one row each).

    Columns: the summed mini-batch losses, their count and the first of
    them since the last round, the local steps and seconds the round took
    on the worker, and the worker's seconds since its first step.
    """

    def __init__(self, rows: np.ndarray):
        self.rows = np.asarray(rows, dtype=np.float64).reshape(-1, len(STAT_FIELDS))

    def column(self, name: str) -> np.ndarray:
        return self.rows[:, STAT_FIELDS.index(name)]

    @property
    def loss(self) -> float:
        """The mean mini-batch loss over the round, all workers (NaN if none was given)."""
        count = self.column("loss_count").sum()
        return float(self.column("loss_sum").sum() / count) if count else math.nan

    @property
    def first_loss(self) -> float:
        """The mean over workers of the round's first mini-batch loss."""
        return float(self.column("first_loss").mean())

    @property
    def elapsed(self) -> float:
        """Seconds since the start, the latest worker's."""
        return float(self.column("elapsed").max())

    @property
    def fastest_step(self) -> float:
        """The smallest mean seconds per local step over the workers."""
        return float((self.column("seconds") / np.maximum(self.column("steps"), 1)).min())


class Periodic:
    """Communicate after every ``tau``-th local step; constant learning rate.

    Example: ``Periodic(4).communicate(8) is True``.
    """

    needs_stats = False
    scales_lr = False      # lr_scale() may differ from 1
    rounds_based = False   # workers take different numbers of steps per round

    def __init__(self, tau: int):
        if not isinstance(tau, int) or tau < 1:
            raise ValueError(f"tau must be a positive integer, got {tau!r}")
        self.tau = tau

    def communicate(self, step: int, now: float = 0.0) -> bool:
        return step % self.tau == 0

    def period(self, step: int) -> int:
        """The communication period in force for local step ``step + 1``."""
        return self.tau

    def lr_scale(self, step: int) -> float:
        """Learning-rate factor for local step ``step + 1``."""
        return 1.0

    def round_done(self, step: int, now: float, stats: RoundStats | None = None,
                   lr: float = 1.0) -> None:
        """A round ended after local step ``step`` at ``now``; ``lr``: the rate in force."""

    def series(self) -> dict:
        """The schedule's decisions for the run record, ``{"schedule/name": list}``."""
        return {}

    def state_dict(self) -> dict:
        """Where the schedule stands (its attributes: numbers and lists of them), for a
        checkpoint; :meth:`load_state_dict` puts it back."""
        return {k: copy.deepcopy(v) for k, v in vars(self).items()}

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(copy.deepcopy(state))


class TimeVarying(Periodic):
    """PR-SGD Algorithm 2: epoch lengths K_s = ceil(k1 s^p), rates gamma s^q.

    Args:
        k1: length of the first epoch (the CLI's ``--tau``).
        period_exp: p, growth of the epoch length (theory: 1/3).
        lr_exp: q, decay of the rate (theory: -2/3).

    Example: ``TimeVarying(4, 1/3, -2/3)`` has epochs of 4, 6, 6, 7, 7, ... steps.
    """

    scales_lr = True

    def __init__(self, k1: int, period_exp: float = 1 / 3, lr_exp: float = -2 / 3):
        super().__init__(k1)
        self.k1, self.period_exp, self.lr_exp = k1, period_exp, lr_exp
        self._ends = []      # _ends[s-1] = last local step of epoch s

    def length(self, s: int) -> int:
        """K_s, the number of local steps of epoch ``s`` (1-based)."""
        return max(1, ceil_tol(self.k1 * s ** self.period_exp))

    def epoch(self, step: int) -> int:
        """The epoch (1-based) that local step ``step`` (1-based) belongs to."""
        while not self._ends or self._ends[-1] < step:
            s = len(self._ends) + 1
            self._ends.append((self._ends[-1] if self._ends else 0) + self.length(s))
        return bisect.bisect_left(self._ends, step) + 1

    def communicate(self, step: int, now: float = 0.0) -> bool:
        return self._ends[self.epoch(step) - 1] == step

    def period(self, step: int) -> int:
        return self.length(self.epoch(step + 1))

    def lr_scale(self, step: int) -> float:
        return float(self.epoch(step + 1)) ** self.lr_exp


class PostLocal(Periodic):
    """Communicate after every step up to ``after`` (t'), then every ``tau`` steps after it.

    Example: ``PostLocal(4, after=2)`` communicates after steps 1, 2, 6, 10, ...
    """

    def __init__(self, tau: int, after: int):
        super().__init__(tau)
        self.after = after

    def communicate(self, step: int, now: float = 0.0) -> bool:
        return step <= self.after or (step - self.after) % self.tau == 0

    def period(self, step: int) -> int:
        return 1 if step < self.after else self.tau


class AdaComm(Periodic):
    """AdaComm (Wang & Joshi, SysML 2019): a period that shrinks as the loss falls.

    Wall-clock time is split into intervals of ``interval`` = T0 seconds.
    At the first round after l T0 (l = 1, 2, ...) the period becomes

        tau_l = min(tau_{l-1}, ceil(sqrt(F_l / F_0) (eta_l / eta_0)^c tau_0)),

    F_0 the training loss at the start (the workers' first mini-batch
    losses, all taken at x_0), F_l the mean training loss of the round just
    completed (all workers), eta the learning rate then and at the start,
    c = ``lr_exp`` (REFERENCES.md leaves the exponent open; 0.5 gives the
    paper's sqrt(eta_l F_l / (eta_0 F_0))). tau never increases and stays
    >= 1. Between decisions a round follows every tau local steps.
    ``history`` lists each decision ``(elapsed, tau, loss)``, the first
    one (l = 0) included.
    """

    needs_stats = True

    def __init__(self, tau0: int, interval: float, lr_exp: float = 0.5):
        super().__init__(tau0)
        if not interval > 0:
            raise ValueError(f"adacomm_interval must be a positive number of seconds, got {interval!r}")
        self.tau0, self.interval, self.lr_exp = tau0, interval, lr_exp
        self._last = 0              # local step of the last round
        self._next = None           # the elapsed time of the next decision
        self.loss0 = self.lr0 = None
        self.history: list[tuple[float, int, float]] = []

    def communicate(self, step: int, now: float = 0.0) -> bool:
        return step - self._last >= self.tau

    def rule(self, loss: float, lr: float) -> int:
        """ceil(sqrt(F_l / F_0) (eta_l / eta_0)^c tau_0), before the never-increase clamp."""
        ratio = max(loss, 0.0) / self.loss0 if self.loss0 > 0 else 1.0
        return max(1, ceil_tol(math.sqrt(ratio) * (lr / self.lr0) ** self.lr_exp * self.tau0))

    def round_done(self, step: int, now: float, stats: RoundStats | None = None,
                   lr: float = 1.0) -> None:
        self._last = step
        if stats is None or math.isnan(stats.loss):
            raise ValueError("the adacomm schedule needs the training loss: call "
                             "algo.step(loss) with each mini-batch's loss")
        if self.loss0 is None:
            self.loss0, self.lr0 = stats.first_loss, lr
            self._next = self.interval
            self.history.append((0.0, self.tau, self.loss0))
        elif stats.elapsed >= self._next:
            self.tau = min(self.tau, self.rule(stats.loss, lr))
            while self._next <= stats.elapsed:
                self._next += self.interval
            self.history.append((stats.elapsed, self.tau, stats.loss))

    def series(self) -> dict:
        if not self.history:
            return {}
        elapsed, tau, loss = zip(*self.history)
        return {"schedule/time": list(elapsed), "schedule/tau": list(tau),
                "schedule/loss": list(loss)}


class Budget(Periodic):
    """PR-SGD Algorithm 3: rounds of a fixed wall-clock budget; fast workers step more.

    A worker ends its round when one more local step would overshoot the
    budget by more than half a step: after its k-th step of the round,
    t (k + 1/2) / k >= B, t the seconds since the round began (its own
    clock: the previous round ended at the same moment on every worker; the
    first began at 0, when training did).
    Each worker takes at least one step. ``seconds=None`` takes B from the
    first round, which has ``tau`` steps everywhere: B = tau times the
    fastest worker's mean step time, so the fastest worker keeps about
    tau steps per round and a worker s times slower takes about tau / s.

    Workers take different numbers of steps, so a training loop under this
    schedule counts rounds, not steps (every worker must join every round)::

        while algo.rounds < rounds:
            ...; loss.backward(); algo.step(loss)
    """

    rounds_based = True

    def __init__(self, tau: int, seconds: float | None = None):
        super().__init__(tau)
        if seconds is not None and not seconds > 0:
            raise ValueError(f"round_budget must be a positive number of seconds, got {seconds!r}")
        self.seconds = seconds
        self.needs_stats = seconds is None
        self._last, self._start = 0, 0.0     # the first round starts when the clock does

    def communicate(self, step: int, now: float = 0.0) -> bool:
        k = step - self._last
        if self.seconds is None:
            return k >= self.tau
        return (now - self._start) * (k + 0.5) / k >= self.seconds

    def round_done(self, step: int, now: float, stats: RoundStats | None = None,
                   lr: float = 1.0) -> None:
        self._last, self._start = step, now
        if self.seconds is None and stats is not None:
            self.seconds = self.tau * stats.fastest_step
            self.needs_stats = False     # the same figures everywhere: the same turn everywhere

    def series(self) -> dict:
        return {} if self.seconds is None else {"schedule/round_budget": [self.seconds]}


def make(opts: dict):
    """The schedule the resolved options ``opts`` name (``schedule``, ``tau`` and the
    schedule's own, :data:`mpisgd.algorithms.options.SCHEDULE`); :class:`OptionError`
    for a missing one."""
    kind, tau = opts["schedule"], opts["tau"]
    if kind == "time-varying":
        return TimeVarying(tau, opts["period_exp"], opts["lr_exp"])
    if kind == "adacomm":
        if opts["adacomm_interval"] is None:
            raise OptionError("adacomm_interval", "must be given with schedule adacomm: the "
                              "seconds T0 between period decisions")
        return AdaComm(tau, opts["adacomm_interval"], opts["adacomm_lr_exp"])
    if kind == "budget":
        return Budget(tau, opts["round_budget"])
    if kind == "post-local":
        if opts["local_after"] is None:
            raise OptionError("local_after", "must be given with schedule post-local: the step "
                              "t' after which rounds come every tau steps")
        return PostLocal(tau, opts["local_after"])
    return Periodic(tau)
