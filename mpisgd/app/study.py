"""``mpiexec -n N mpisgd study GRID.yaml --out DIR``: a whole grid inside one launch.

The grid (:mod:`mpisgd.app.grid`, the same file and the same ``DIR`` layout
as ``mpisgd sweep``) runs one task after another in this one ``mpiexec``, so
the study pays the start-up (the launcher, ``import torch``: 2-4 s a rank)
once instead of once per configuration. A task of ``ranks`` r runs on the
sub-communicator of world ranks 0..r-1 (``MPI_Comm_split``), exactly as
``mpiexec -n r mpisgd train`` would, with its own record; the other ranks wait
at a nonblocking barrier polled with sleeps (never spinning on a core the
task needs). A task's state is read off its files first, as the sweep's
array tasks do: completed tasks are skipped, interrupted ones resume.

Outcomes: a diverged task (exit 4 alone) is a result, recorded as such, and
the study goes on; a signal (SIGTERM, SIGUSR1) stops the task being run with
a checkpoint and ends the study with exit status 3 (run it again to resume);
any other exception ends the whole job, as in ``mpisgd train``. Bad input
(a bad grid, a task needing more ranks than the launch has) stops every
rank before the first task, exit 2.
"""
from __future__ import annotations

import os
import sys

from .._mpi import idle_barrier
from ..errors import ConfigError, agree
from . import grid


def main(grid_file: str, out: str, comm, quiet: bool = False) -> int:
    """Run every task of the grid on ``comm``; the exit status (0, or 3: interrupted)."""
    from . import record, train
    from .config import from_sources
    from .stops import Diverged, Interrupted
    rank, size = comm.Get_rank(), comm.Get_size()
    error, tasks = None, []
    try:
        base, values = grid.load(grid_file)
        tasks = grid.expand(base, values, out)
        big = [t for t in tasks if t.ranks > size]
        if big:
            raise ConfigError(f"task {big[0].name} needs {big[0].ranks} ranks; this launch has "
                              f"{size} (mpiexec -n {max(t.ranks for t in tasks)})")
        if rank == 0:
            grid.write(out, grid_file, tasks)
    except ConfigError as err:
        error = err
    agree(comm, error)
    states = comm.bcast({t.name: grid.state(t) for t in tasks} if rank == 0 else None, root=0)
    if rank == 0 and not quiet:
        print(f"mpisgd study: {len(tasks)} tasks on {size} ranks in {out}: "
              + ", ".join(f"{n} {s}" for s in ("completed", "interrupted", "failed", "pending")
                          if (n := sum(v == s for v in states.values()))), flush=True)
    for i, task in enumerate(tasks):
        if states[task.name] == "completed":
            continue
        sub = comm.Split(0 if rank < task.ranks else 1, rank)
        outcome = "completed"
        if rank < task.ranks:
            try:
                cfg = from_sources(grid.config_file(out, task), {})
                cfg.resume = task.checkpoints if states[task.name] == "interrupted" else None
                cfg.overwrite = states[task.name] == "failed"
                train.run(cfg, sub, quiet=True)
            except Diverged:
                outcome = "diverged"
            except Interrupted:
                outcome = "interrupted"
            except ConfigError as err:        # raised on the task's ranks alike (their agree)
                outcome = f"error: task {task.name}: {err}"
        sub.Free()
        idle_barrier(comm, 0.01)
        outcome = comm.bcast(outcome, root=0)
        if outcome.startswith("error: "):
            err = ConfigError(outcome[len("error: "):])
            err.echo = rank != 0
            raise err
        if rank == 0 and not quiet:
            status = record.read(task.record)["attrs"].get("status", outcome)
            print(f"mpisgd study: [{i + 1}/{len(tasks)}] {task.name} ({task.ranks} ranks): "
                  f"{status}", flush=True)
        if outcome == "interrupted":
            if rank == 0:
                sys.stderr.flush()
                os.write(2, f"mpisgd: study interrupted at {task.name}; run it again to resume\n"
                         .encode())
            return 3
    return 0
