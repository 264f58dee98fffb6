"""What the training loop does between steps, every rank alike: log points, checkpoints, stops.

:class:`Points` holds the loop's state between steps (the step, the training
clock that stops during log points and checkpoints, the rows for
checkpoints, the next checkpoint due) and its actions: a log point
(:func:`~mpisgd.app.logpoint.log_row` evaluated, rank 0's row recorded, the
votes read), a checkpoint, a stop by signal. The driver
(:mod:`mpisgd.app.train`) calls them in its loop.
"""
from __future__ import annotations

import time
import warnings

import torch

from .. import checkpoint
from .logpoint import check_finite, log_row
from .pace import next_multiple
from ..losses import LossWindow
from .stops import Interrupted, signal_name


class Points:
    """The loop's state and its log points, checkpoints and stops (collective calls).

    Starts the clock at a barrier (set-up traffic excluded from the counters);
    a resumed run's ``resumed`` driver state continues it.
    """

    def __init__(self, cfg, algo, record, evaluate, progress, signals, kept,
                 resumed: dict | None, rates=None):
        self.cfg, self.algo, self.record, self.rates = cfg, algo, record, rates
        self.evaluate, self.progress, self.signals, self.kept = evaluate, progress, signals, kept
        self.telemetry = algo.telemetry   # every collective: uncounted, in the algorithm's order
        self.watch = LossWindow(algo.device)
        self.ckpt_dir = cfg.checkpoint_dir or checkpoint.default_dir(cfg.out)
        self.rank0 = record is not None
        self.board = None
        if self.rank0 and cfg.tensorboard:
            from .board import Board
            self.board = Board(cfg.tensorboard)
        self.rows = []             # rank 0: the record's rows, for checkpoints
        self.first_loss = None     # the workers' mean loss of step 1 (for the stall check)
        self.step = 0
        self.paused = 0.0
        self.row = {}
        self.telemetry.barrier()
        self.start = time.perf_counter()
        self.base = algo.stats()   # counters from the start barrier
        if resumed is not None:    # the clock, counters and interval go on from the checkpoint
            self.step, self.base = resumed["step"], resumed["base"]
            self.first_loss = resumed["first_loss"]
            self.start -= resumed["train_time"]
            self.watch.load_state_dict(resumed["losses"])
            if rates is not None:                # made at the base rate, now where it was
                rates.load_state_dict(resumed["lr"])
            self.rows = [dict(r) for r in resumed["rows"]] if self.rank0 else []
            self.progress.update(self.step)
        algo.clock = self.train_time       # schedules read training time
        self.next_checkpoint = next_multiple(self.position(), cfg.checkpoint_every)

    def stepped(self, loss, skipped: bool = False) -> None:
        """After a local step: count it, keep its loss (not of a step fp16's scaler
        ``skipped``: an overflow is the scaler's to handle, not a divergence), set the next
        step's rate."""
        self.step += 1
        if not skipped:
            self.watch.add(loss)
        if self.rates is None:
            return
        if self.step > 1:
            self.rates.step()
            return
        with warnings.catch_warnings():   # torch checks, at the scheduler's first step only,
            warnings.filterwarnings(       # that the optimizer stepped: fp16 may have skipped it
                "ignore", "Detected call of `lr_scheduler.step", UserWarning)
            self.rates.step()

    def train_time(self) -> float:
        """Seconds of training so far (log points and checkpoints excluded)."""
        return time.perf_counter() - self.start - self.paused

    def position(self) -> int:
        """The step checkpoints and stops are named by, the same on every rank: rounds x tau
        under a wall-clock budget (ranks take different numbers of steps), else the step."""
        algo = self.algo
        return algo.rounds * algo.period if algo.is_worker and algo.rounds_based else self.step

    def log_point(self, point: int, draft: bool = False) -> str | None:
        """Every rank: evaluate the consensus, rank 0 records; the clock stops meanwhile.
        Returns the signal any rank received (voted in the log point's Allreduce).
        ``draft``: the last step's row before ``finish()``, for its checkpoint only (the
        row a longer run logs there); the record gets the row after ``finish()``."""
        if self.algo.device.type == "cuda":   # training ends when its kernels have
            torch.cuda.synchronize(self.algo.device)
        t_log = time.perf_counter()
        self.row, health, vote = log_row(self.algo, self.evaluate, point,
                                         t_log - self.start - self.paused, self.watch,
                                         self.base["bytes_sent"], self.signals, self.step)
        self.first_loss = self.row.pop("first_loss", self.first_loss)
        if self.rank0:
            if self.rows and self.rows[-1]["step"] == point:     # the draft of this point
                self.rows.pop()
            self.rows.append(self.row)
            if not draft:
                self.record.log(**self.row)
                if self.board is not None:
                    self.board.log(self.row)
        if not draft:
            self.progress.log(self.row)
        self.telemetry.barrier()      # rank 0's record write is not anyone's training time
        self.paused += time.perf_counter() - t_log
        check_finite(self.cfg, health, point)
        self.kept.into(self.record)   # this point's warnings (--on-nonfinite warn's among them)
        return signal_name(vote)

    def save(self, point: int) -> str:
        """A checkpoint after local step ``point`` (collective); the clock stops meanwhile."""
        t0 = time.perf_counter()
        driver = {"step": self.step, "base": self.base, "train_time": t0 - self.start - self.paused,
                  "losses": self.watch.state_dict(), "first_loss": self.first_loss,
                  "lr": self.rates.state_dict() if self.rates is not None else None}
        meta = {"config": self.cfg.resolved(), "rows": self.rows, "algo": self.cfg.algo} \
            if self.rank0 else {}
        path = checkpoint.save(self.telemetry, self.ckpt_dir, point,
                               {"algorithm": self.algo.state_dict(), "driver": driver}, meta)
        self.paused += time.perf_counter() - t0
        return path

    def stop(self, name: str, point: int) -> None:
        """A checkpoint, then :class:`~mpisgd.app.stops.Interrupted` (every rank alike)."""
        path = self.save(point)
        raise Interrupted(f"interrupted: {name} at step {point}, checkpoint {path}")

    def last_checkpoint(self, point: int) -> None:
        """With ``--checkpoint-every``, the last step is checkpointed too (Lightning's
        ``save_last``), before ``finish()``: the state and the row a longer run has at
        ``point``, so ``--resume`` with a larger ``--steps`` extends the run."""
        if self.cfg.checkpoint_every is not None:
            interval = self.watch.state_dict()
            self.log_point(point, draft=True)
            self.save(point)
            self.watch.load_state_dict(interval)     # the final row reports the interval too

    def checkpoint_due(self, point: int) -> None:
        """The periodic checkpoint, if one is due at ``point`` (every rank alike)."""
        if self.next_checkpoint is not None and point >= self.next_checkpoint:
            self.save(point)
            self.next_checkpoint = next_multiple(point, self.cfg.checkpoint_every)
