"""How a worker's loop is paced: when it ends, where its log points and checkpoints fall,
and rank 0's progress display."""
from __future__ import annotations

import math
import sys
import time


class Pace:
    """When a worker's loop ends and where its log points fall.

    Every ``--log-every`` local steps, for ``--steps`` steps; but under a
    wall-clock budget per round (``--schedule budget``, PR-SGD Algorithm 3)
    workers take different numbers of steps per round, so there the run is
    ``ceil(steps / tau)`` rounds, log points fall after every
    ``log_every / tau`` rounds, and a log point's step is rounds x tau.
    """

    def __init__(self, cfg, algo):
        self.cfg, self.algo = cfg, algo
        self.by_rounds = algo.rounds_based
        self.tau = algo.period
        self.rounds = math.ceil(cfg.steps / self.tau)
        self.every = max(1, round(cfg.log_every / self.tau))
        self._seen_rounds = algo.rounds      # a resumed run's rounds so far

    def running(self, step: int) -> bool:
        """Whether the worker, having taken ``step`` local steps, goes on."""
        return self.algo.rounds < self.rounds if self.by_rounds else step < self.cfg.steps

    def after_step(self, step: int, progress) -> tuple[int | None, bool]:
        """(the step of the log point that follows, or None; whether the loop ends)."""
        if not self.by_rounds:
            progress.update()
            last = step == self.cfg.steps
            return (step if step % self.cfg.log_every == 0 or last else None), last
        rounds = self.algo.rounds
        if rounds == self._seen_rounds:
            return None, False
        progress.update(self.tau * (rounds - self._seen_rounds))
        self._seen_rounds = rounds
        last = rounds >= self.rounds
        return (rounds * self.tau if rounds % self.every == 0 or last else None), last


class Progress:
    """Rank 0's progress: a tqdm bar on a terminal; plain lines in a batch log.

    A log gets one line per log point, at most one every ``interval``
    seconds (the last always), on stdout like the summary, so they stay in order.
    """

    def __init__(self, total: int, desc: str, enabled: bool, interval: float = 10.0):
        from tqdm import tqdm
        self.total, self.desc, self.interval = total, desc, interval
        self.tty = enabled and sys.stderr.isatty()
        self.enabled = enabled
        self.bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr, leave=False,
                        dynamic_ncols=True, disable=not self.tty)
        self.last = -interval

    def update(self, steps: int = 1) -> None:
        self.bar.update(steps)

    def log(self, row: dict) -> None:
        if self.tty:
            self.bar.set_postfix(loss=f"{row['train_loss']:.3f}", err=f"{row['test_error']:.3f}",
                                 refresh=False)
        elif self.enabled and (time.monotonic() - self.last >= self.interval
                               or row["step"] == self.total):
            self.last = time.monotonic()
            print(f"{self.desc}: step {int(row['step'])}/{self.total}, "
                  f"train loss {row['train_loss']:.4f}, test error {row['test_error']:.4f}, "
                  f"{row['wall_time']:.1f} s", flush=True)

    def close(self) -> None:
        self.bar.close()


def next_multiple(step: int, every: int | None) -> int | None:
    """The first multiple of ``every`` after ``step`` (``None``: no periodic checkpoints)."""
    return None if every is None else (step // every + 1) * every
