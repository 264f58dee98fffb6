"""Algorithms whose communication rounds a schedule times: local, gossip, easgd.

A :class:`Scheduled` algorithm takes one local optimizer step per
:meth:`~mpisgd.algorithms.base.Algorithm.step` and asks its schedule
(:mod:`mpisgd.schedule`) whether a round follows. Subclasses say what a
round is (:meth:`_round_step`: the local update together with the round's
communication) and what a plain step is (:meth:`_local_step`).

Schedules that decide from what the workers see (AdaComm reads the training
loss, the wall-clock budget of PR-SGD Algorithm 3 the step times) get it in
the round itself: each worker's report (:data:`mpisgd.schedule.STAT_FIELDS`)
travels in an ``Iallgather`` posted before the round's own communication
and completed after it, so every worker takes the same decision from the
same figures, at the cost of one small collective overlapped with the round.
"""
from __future__ import annotations

import torch

from .. import schedule as schedules
from .base import Algorithm


class Scheduled(Algorithm):
    """Base of the algorithms with a schedule option set (:func:`mpisgd.schedule.options`)."""

    def __init__(self, model, optimizer, comm=None, **options):
        super().__init__(model, optimizer, comm, **options)
        self.schedule = schedules.make(self.opts)
        self._base_lr = [g["lr"] for g in optimizer.param_groups]
        self._since = 0            # local steps since the last round
        self._round_start = 0.0    # clock when the last round ended (0: training began)
        self._report = torch.zeros(len(schedules.STAT_FIELDS), dtype=torch.float64)
        self._reports = torch.zeros(self.workers, len(schedules.STAT_FIELDS), dtype=torch.float64)

    def validate(self):
        schedules.make(self.opts)                      # a missing or bad schedule option
        o = self.opts
        if o["tau"] == 1 and o["schedule"] == "adacomm":
            self.warn("adacomm with tau = 1 cannot adapt (tau never increases): give --tau tau_0 > 1")
        if o["tau"] == 1 and o["schedule"] == "budget" and o["round_budget"] is None:
            self.warn("budget with tau = 1 and no --round-budget gives each round one step of the "
                      "fastest worker, so every worker takes one step: raise --tau or give "
                      "--round-budget")

    def _step(self) -> None:
        """One local step; a round when the schedule says so; the next step's learning rate."""
        self.finished = False
        self.steps += 1
        self._since += 1
        now = self.clock()
        if self.schedule.communicate(self.steps, now):
            pending = self._post_report(now) if self.schedule.needs_stats else None
            self._round_step()
            self._since = 0
            stats = None
            if pending is not None:
                pending.wait()
                stats = schedules.RoundStats(self._reports.numpy())
            self._round_start = self.clock()
            self.schedule.round_done(self.steps, self._round_start, stats,
                                     self.optimizer.param_groups[0]["lr"])
        else:
            self._local_step()
        if self.opts["schedule"] == "time-varying":       # PR-SGD Algorithm 2's rates
            scale = self.schedule.lr_scale(self.steps)
            for group, lr in zip(self.optimizer.param_groups, self._base_lr):
                group["lr"] = lr * scale

    def _post_report(self, now: float):
        """Start gathering every worker's report on the round that ends now."""
        r = self._report
        r[0], r[1], r[2] = self.take_loss()
        r[3], r[4], r[5] = self._since, now - self._round_start, now
        return self.comm.iallgather(r, self._reports)

    def _local_step(self) -> None:
        """A step without a round: the optimizer's."""
        self.optimizer.step()

    def _round_step(self) -> None:
        """The step that ends a round: the update and the round's communication."""
        raise NotImplementedError

    def schedule_series(self) -> dict:
        """The schedule's decisions for the run record (AdaComm: ``/schedule/*``)."""
        history = getattr(self.schedule, "history", None)
        if not history:
            out = {}
        else:
            elapsed, tau, loss = zip(*history)
            out = {"schedule/time": list(elapsed), "schedule/tau": list(tau),
                   "schedule/loss": list(loss)}
        if isinstance(self.schedule, schedules.Budget) and self.schedule.seconds is not None:
            out["schedule/round_budget"] = [self.schedule.seconds]
        return out

    def series(self, train_time: float) -> dict:
        out = super().series(train_time)
        if self.rank == 0:
            out.update(self.schedule_series())
        return out
