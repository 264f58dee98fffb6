"""A round, a schedule that says when, and an optimizer-state policy: A(tau, W, v).

A :class:`Scheduled` algorithm takes one local optimizer step per
:meth:`~mpisgd.algorithms.base.Algorithm.step` and asks its schedule
(:mod:`mpisgd.schedule`) whether a round follows. The round is an object of
:mod:`mpisgd.algorithms.rounds` that the algorithm makes
(:meth:`Scheduled.make_round`); after each round the state policy
(:mod:`mpisgd.algorithms.state`) runs. A step that ends a round is

* ``simultaneous`` rounds (EASGD): ``start``, the local step, ``finish``;
* the others: the local step, then ``start`` and ``finish``; with
  ``deferred`` (gossip's ``overlap``), ``finish`` waits for the next step,
  so the exchange hides behind that step's computation.

Schedules that decide from what the workers see (AdaComm reads the training
loss, the wall-clock budget of PR-SGD Algorithm 3 the step times) get it in
the round itself: each worker's report (:data:`mpisgd.schedule.STAT_FIELDS`)
travels in an ``Iallgather`` posted before the round's own communication
and completed after it, so every worker takes the same decision from the
same figures, at the cost of one small collective overlapped with the round.

With groups (:mod:`mpisgd.groups`: ``group_size`` G > 1) the round runs
among the m groups on each rank's block of x (``self.peers``, ``self.x``),
and the group all-gathers the blocks after the round has changed x (after
``start`` for a simultaneous round, after ``finish`` and the outer step for
the others). Inside a group, gradients are averaged every step
(``group_tau`` 1), or parameters every ``group_tau`` steps and before every
round (hierarchical local SGD, Lin et al. 2020): a round then starts from
the group's average, and rounds every tau steps give torch's
``HierarchicalModelAverager`` with periods {G: group_tau, P: tau}.

A *stepwise* round (``stepwise``: local SGD's fragments,
:class:`~mpisgd.algorithms.streaming.Fragmented`) keeps its own staggered
timing: after each local step it lands the fragments due and starts the
next (``after_step``), and :meth:`finish` flushes it; the schedule then only
gives the period.

A new algorithm of this kind is a preset: its options, :meth:`make_round`,
and what it outputs (:meth:`consensus`), as ``local.py`` shows.
"""
from __future__ import annotations

import abc

import torch

from .. import schedule as schedules
from . import outer, state
from ..errors import OptionError
from ..losses import LossWindow
from .base import Algorithm
from .rounds import Average, Round


class Scheduled(Algorithm):
    """Base of the algorithms whose rounds a schedule times (options ``tau`` and
    :data:`mpisgd.algorithms.options.SCHEDULE`)."""

    #: :meth:`finish` runs one more round unless the last step ended one (local SGD's output).
    final_round = False

    @classmethod
    def check(cls, opts: dict) -> None:
        schedules.make(opts)                      # a missing or bad schedule option
        if opts["tau"] == 1 and opts["schedule"] == "adacomm":
            cls.warn("adacomm with tau = 1 cannot adapt (tau never increases): give --tau tau_0 > 1")
        grouped = opts.get("group_size", 1) != 1
        if opts.get("group_tau", 1) > 1 and not grouped:
            raise OptionError("group_tau", f"needs groups (group_size > 1), got group_tau "
                              f"{opts['group_tau']} with group_size 1")
        if opts.get("group_tau", 1) > 1 and opts.get("overlap"):
            raise OptionError("overlap", "does not combine with group_tau > 1: a round that "
                              "lands a step late meets ranks of a group that have moved apart")
        if opts.get("group_tau", 1) > 1 and opts.get("momentum_policy", "local") == "average":
            raise OptionError("momentum_policy", "average does not combine with group_tau > 1 "
                              "(the ranks of a group hold different optimizer states between "
                              "their averagings)")
        if grouped and opts["schedule"] == "budget":
            raise OptionError("schedule", "budget lets each rank take its own number of steps "
                              "per round, which the ranks of a group cannot: use another "
                              "schedule with group_size > 1")
        if opts["tau"] == 1 and opts["schedule"] == "budget" and opts["round_budget"] is None:
            cls.warn("budget with tau = 1 and no --round-budget gives each round one step of the "
                     "fastest worker, so every worker takes one step: raise --tau or give "
                     "--round-budget")

    def __init__(self, model, optimizer, comm=None, **options):
        super().__init__(model, optimizer, comm, **options)
        self.schedule = schedules.make(self.opts)
        #: This algorithm's round (:mod:`mpisgd.algorithms.rounds`).
        self.round: Round = self.make_round()
        #: The outer optimizer on what the round averages into (``--outer``), or ``None``.
        self.outer = self.make_outer()
        self.state = state.policy(self.opts.get("momentum_policy", "local"), optimizer,
                                  self.flat, self.peers)
        self.deferred = bool(self.opts.get("overlap", False)) and not self.round.simultaneous
        self._pending = None       # a deferred round in flight
        self._base_lr = [g["lr"] for g in optimizer.param_groups]
        self._since = 0            # local steps since the last round
        self._round_start = 0.0    # clock when the last round ended (0: training began)
        self._report = torch.zeros(len(schedules.STAT_FIELDS), dtype=torch.float64)
        self._reports = torch.zeros(self.comm.size, len(schedules.STAT_FIELDS),
                                    dtype=torch.float64)        # every rank's: a group agrees
        #: With ``group_tau`` > 1, the parameter averaging inside the group, else ``None``.
        self.inside = Average(self.groups.group, self.flat.data, self.flat.buffers) \
            if self.groups is not None and self.opts.get("group_tau", 1) > 1 else None
        self._since_inside = 0     # local steps since the group last averaged
        if self.schedule.needs_stats:       # the round's losses, for its report
            self.losses = LossWindow(self.flat.device)

    @abc.abstractmethod
    def make_round(self) -> Round:
        """The round (on ``self.comm`` and ``self.flat``), made once at construction."""

    def make_outer(self):
        """The outer step after each round (``--outer``; ``None``: none)."""
        return outer.make(self.opts, self.round.averaged)

    def layout(self) -> tuple[list, list]:
        """Where the model's tensors lie in x: each one's (start, end) from x's start (with
        groups, this rank's block: tensors outside it lie outside 0..len(x)) and shapes."""
        lo = self.groups.blocks[self.groups.local][0] if self.groups is not None else 0
        return [(a - lo, b - lo) for a, b in self.flat.offsets], [p.shape for p in self.flat.params]

    def compressor(self):
        """``(buf, shapes) -> CompressedMean`` over the peers for ``--compress`` (calibrated
        on their telemetry: collective), or ``None`` without compression."""
        if self.opts.get("compress", "none") == "none":
            return None
        from ..compress import CompressedMean

        def make(buf, shapes):
            cm = CompressedMean(self.peers, buf, self.opts["compress"], shapes,
                                self.opts["error_feedback"])
            cm.calibrate(self._peer_telemetry)
            return cm
        return make

    @property
    def period(self) -> int:
        return self.schedule.period(self.steps)

    @property
    def rounds_based(self) -> bool:
        return self.schedule.rounds_based

    def _step(self) -> int:
        """One local step; a round when the schedule says so; the next step's learning rate."""
        self.finished = False
        if self.round.stepwise:
            return self._stepwise()
        self._since += 1
        now = self.clock()
        rounds = int(self.schedule.communicate(self.steps, now))
        if rounds:
            pending = self._post_report(now) if self.schedule.needs_stats else None
            self._round(local_step=True)
            self._since = 0
            stats = None
            if pending is not None:
                pending.wait()
                stats = schedules.RoundStats(self._reports.numpy())
            self._round_start = self.clock()
            self.schedule.round_done(self.steps, self._round_start, stats,
                                     self.optimizer.param_groups[0]["lr"])
            if not self.schedule.needs_stats:    # a budget fixed by its first round: no
                self.losses = None               # report, no window to keep growing
        else:
            self._local_step()
            self._settle()
            if self.inside is not None and self.steps % self.opts["group_tau"] == 0:
                self._average_inside()
        if self.schedule.scales_lr:               # PR-SGD Algorithm 2's rates
            scale = self.schedule.lr_scale(self.steps)
            for group, lr in zip(self.optimizer.param_groups, self._base_lr):
                group["lr"] = lr * scale
        return rounds

    def _local_step(self) -> None:
        self._optimizer_step()
        self._since_inside += 1

    def _stepwise(self) -> int:
        """One local step, then what a stepwise round lands and starts after it (with
        groups, each rank's block of x: the group's blocks gathered after a landing)."""
        self._local_step()
        landed = self.round.landed
        started = self.round.after_step(self.steps)
        self._gather_if(landed)
        self._since = 0 if started else self._since + 1
        return started

    def _gather_if(self, landed: int) -> None:
        if self.groups is not None and self.round.landed != landed:
            self.groups.gather(self.flat.data)

    def _average_inside(self) -> None:
        """Average the parameters inside the group (``group_tau`` > 1), if they have moved."""
        if self._since_inside:
            self.inside.run()
            self._since_inside = 0

    def _round(self, local_step: bool) -> None:
        """Round :attr:`rounds` (with this step's local update, if ``local_step``), then the
        state policy; the caller counts it."""
        r = self.round
        if r.simultaneous:
            self._round_delay()
            pending = r.start(self.rounds)
            if self.groups is not None:          # x changed in start: the group's blocks
                self.groups.gather(self.flat.data)
            if local_step:
                self._local_step()
            self._finish_round(pending)
        else:
            if local_step:
                self._local_step()
            self._settle()
            if self.inside is not None:          # the round starts from the group's average
                self._average_inside()
            self._round_delay()
            pending = r.start(self.rounds)
            if self.deferred:
                self._pending = pending
            else:
                self._finish_round(pending)
        self.state.after_round()

    def _finish_round(self, pending) -> None:
        """Complete a round, then the outer step on what it averaged (``--outer``); with
        groups, the group's blocks of x after a round that changed it in :meth:`finish`."""
        self.round.finish(pending)
        if self.outer is not None:
            self.outer.step()
        if self.groups is not None and not self.round.simultaneous:
            self.groups.gather(self.flat.data)

    def _settle(self) -> None:
        """Apply the deferred round in flight, if any."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._finish_round(pending)

    def _post_report(self, now: float):
        """Start gathering every worker's report on the round that ends now."""
        r = self._report
        r[0], r[1], _, r[2] = self.losses.take()
        r[3], r[4], r[5] = self._since, now - self._round_start, now
        return self.comm.iallgather(r, self._reports)

    def finish(self) -> None:
        """Apply a round still in flight; with :attr:`final_round`, one more round unless
        the last step ended one (a stepwise round: the rounds in flight, then one of
        every fragment). Afterwards :meth:`consensus` is final."""
        if self.round.stepwise:              # its own final rounds (Fragmented.flush)
            if not self.finished:
                landed = self.round.landed
                self.rounds += self.round.flush(self.steps)
                self._gather_if(landed)
            return super().finish()
        self._settle()
        if self.final_round and not self.finished and self._since:
            self._round(local_step=False)
            self.rounds += 1
            self._settle()
        super().finish()

    def state_dict(self) -> dict:
        """Adds the schedule's position, the round's own state and, for a deferred round
        in flight, its number: a continuation posts it again (x has not changed since
        its start, so the same exchange follows). The round's state first: a stepwise
        round completes its exchanges in flight there, which the counters then see."""
        round_state = self.round.state_dict()
        return {**super().state_dict(), "schedule": self.schedule.state_dict(),
                "round": round_state, "since": self._since,
                "since_inside": self._since_inside,
                "outer": self.outer.state_dict() if self.outer is not None else None,
                "losses": self.losses.state_dict() if self.losses is not None else None,
                "round_start": self._round_start,
                "pending": self.rounds - 1 if self._pending is not None else None}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.schedule.load_state_dict(state["schedule"])
        if not self.schedule.needs_stats:
            self.losses = None
        self.round.load_state_dict(state["round"])
        if self.outer is not None:
            self.outer.load_state_dict(state["outer"])
        self._since, self._round_start = state["since"], state["round_start"]
        self._since_inside = state.get("since_inside", 0)
        if self.losses is not None and state["losses"] is not None:
            self.losses.load_state_dict(state["losses"])
        if state["pending"] is not None:
            counters = self.peers.bytes_sent, self.peers.comm_time
            self._pending = self.round.start(state["pending"])
            self.peers.bytes_sent, self.peers.comm_time = counters   # counted before the stop

    def close(self) -> None:
        self._settle()
        self.round.close()
        super().close()

    def worker_series(self) -> dict:
        return {**super().worker_series(), **self.round.series()}

    def series(self, train_time: float) -> dict:
        out = super().series(train_time)
        if self.rank == 0:
            out.update(self.schedule.series())
        return out
