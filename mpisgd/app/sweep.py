"""``mpisgd sweep GRID.yaml --out DIR``: a study's grid as job arrays, or run here one by one.

The grid (:mod:`mpisgd.app.grid`) expands into tasks; those already completed
are skipped, the interrupted resume from their newest checkpoint, the rest
run from the start. Tasks that ask for the same ranks, cores and time limit
form one job array (``DIR/jobs/GROUP.sbatch`` with its task list
``GROUP.tasks``, one name per line, line i + 1 for array index i), submitted
with the scheduler's own command (``sbatch``, ``qsub``, ``bsub``; each batch
system is one object of :mod:`mpisgd.app.batch`). Each
array task runs ``python -m mpisgd.app.sweep DIR NAME --launcher L``
(:func:`run_task`), which reads the task's state off its files at the
moment it starts (a resubmitted array does not redo what completed
meanwhile) and starts the ranks:

* ``slurm``: ``srun --mpi=pmi2`` (MPICH, its pip wheel included) or
  ``--mpi=pmix`` (Open MPI), :func:`mpisgd.mpienv.srun_mpi`: srun places the
  ranks on the allocation, delivers ``--signal`` to them and accounts them;
  an interrupted task (exit 3) is requeued with ``scontrol requeue``;
* ``pbs``, ``lsf``, ``local``: the MPI's own ``mpiexec`` (the venv's, the
  pip wheel's, when there is one; else the one on ``PATH``), which reads
  the allocation from the scheduler's environment; ``local`` runs every task
  here, one after another, without a scheduler.

Why the schedulers' commands and not a submission library: submitit
(Slurm and local only) pickles Python callables and starts its own srun,
with no say in the PMI; PSI/J covers Slurm, PBS and LSF but submits one job
per specification, where a sweep of 100 configurations is 100 queue entries
instead of one array (sites cap both). A job array is a few ``#SBATCH``
lines; the scripts are written to ``DIR/jobs`` and can be read, edited and
resubmitted by hand.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys

from ..errors import ConfigError
from . import grid
from .batch import SYSTEMS, Array
from .grid import Task

#: ``--scheduler``: a batch system (:mod:`mpisgd.app.batch`), or ``local``: here, one by one.
SCHEDULERS = (*SYSTEMS, "local")


def plan(grid_file: str, out: str) -> list[Task]:
    """Expand and validate the grid, write the configurations and the manifest."""
    base, values = grid.load(grid_file)
    tasks = grid.expand(base, values, out)
    grid.write(out, grid_file, tasks)
    return tasks


def groups(tasks: list[Task]) -> dict[str, list[Task]]:
    """Tasks by what they ask of the scheduler: ``r4-c1-t00h30m00s`` -> tasks."""
    out: dict[str, list[Task]] = {}
    for t in tasks:
        out.setdefault(f"r{t.ranks}-c{t.cpus}-t{t.time.replace(':', '')}", []).append(t)
    return out


def script(scheduler: str, out: str, group: str, tasks: list[Task], parallel: int | None = None) -> str:
    """The job-array script of one group of tasks (same ranks, cores, time limit)."""
    if scheduler not in SYSTEMS:
        raise ConfigError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {scheduler!r}")
    system, t, n = SYSTEMS[scheduler], tasks[0], len(tasks)
    out = os.path.abspath(out)
    listing = os.path.join(out, "jobs", f"{group}.tasks")
    python = shlex.quote(sys.executable)
    run = f'exec {python} -m mpisgd.app.sweep {shlex.quote(out)} "$TASK" --launcher {scheduler}'
    head = system.header(Array(f"mpisgd-{group}", n, t.ranks, t.cpus, t.time, t.seconds,
                               os.path.join(out, "logs"), parallel))
    return "\n".join([
        "#!/bin/bash", f"# mpisgd sweep: {n} tasks of {t.ranks} ranks, {t.cpus} cores each, "
        f"time limit {t.time}; the task names are in {listing}", *head,
        "set -euo pipefail", f"cd {shlex.quote(out)}",
        f"export OMP_NUM_THREADS={t.cpus}",
        f'TASK=$(sed -n "{system.index}p" {shlex.quote(listing)})', run, ""])


def submit(scheduler: str, out: str, tasks: list[Task], parallel: int | None = None,
           extra: list[str] | None = None, dry_run: bool = False) -> list[str]:
    """Write one array script per group of the tasks still to run and submit it; the job ids
    (the scripts' paths with ``dry_run``)."""
    submitted = []
    os.makedirs(os.path.join(out, "jobs"), exist_ok=True)
    for group, members in groups(tasks).items():
        with open(os.path.join(out, "jobs", f"{group}.tasks"), "w", encoding="utf-8") as f:
            f.write("".join(f"{t.name}\n" for t in members))
        path = os.path.join(out, "jobs", f"{group}.{SYSTEMS[scheduler].suffix}")
        with open(path, "w", encoding="utf-8") as f:
            f.write(script(scheduler, out, group, members, parallel))
        if dry_run:
            submitted.append(path)
            continue
        command = [*SYSTEMS[scheduler].submit_argv, *(extra or [])]
        if shutil.which(command[0]) is None:
            raise ConfigError(f"--scheduler {scheduler}: no {command[0]} on PATH (the script is "
                              f"written: {path}; --dry-run writes without submitting)")
        if SYSTEMS[scheduler].stdin:    # bsub reads the script's #BSUB lines from its stdin
            with open(path, encoding="utf-8") as f:
                done = subprocess.run(command, stdin=f, capture_output=True, text=True)
        else:
            done = subprocess.run([*command, path], capture_output=True, text=True)
        if done.returncode != 0:
            raise ConfigError(f"{' '.join(command)} {path} failed: {done.stderr.strip()}")
        submitted.append(done.stdout.strip().split(";")[0])
    return submitted


def mpiexec() -> str:
    """The MPI's own launcher: the venv's (the pip wheel's), else ``mpiexec`` on ``PATH``."""
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    if found is None:
        raise ConfigError("no mpiexec: neither beside this python nor on PATH")
    return found


def launcher(kind: str, ranks: int) -> list[str]:
    """The command that starts ``ranks`` ranks under ``kind``."""
    system = SYSTEMS.get(kind)
    if system is not None and system.launch is not None:
        return system.launch(ranks)
    command = [mpiexec()]
    version = subprocess.run([command[0], "--version"], capture_output=True, text=True).stdout
    if "Open MPI" in version or "OpenRTE" in version:
        if os.geteuid() == 0:
            command.append("--allow-run-as-root")
        if kind == "local" and ranks > (os.cpu_count() or 1):
            command.append("--oversubscribe")
    return [*command, "-n", str(ranks)]


def run_task(out: str, name: str, kind: str) -> int:
    """Run task ``name`` of the study in ``out`` from where its files leave it; its exit
    status (0 for one already completed)."""
    tasks = {t.name: t for t in grid.read(out)}
    if name not in tasks:
        raise ConfigError(f"{out}: no task {name!r} in its manifest")
    task = tasks[name]
    now = grid.state(task)
    if now == "completed":
        print(f"mpisgd sweep: {name}: completed, skipped", flush=True)
        return 0
    command = [*launcher(kind, task.ranks), sys.executable, "-m", "mpisgd", "train", "--quiet",
               *grid.train_args(task, grid.config_file(out, task))]
    print(f"mpisgd sweep: {name} ({now}): {' '.join(command)}", flush=True)
    import signal
    for sig in (signal.SIGTERM, signal.SIGUSR1):  # the ranks stop and checkpoint; this process
        signal.signal(sig, lambda *_: None)       # stays to requeue (a handler, not SIG_IGN:
    rc = subprocess.run(command).returncode       # the launcher gets the default back)
    requeue = SYSTEMS[kind].requeue if kind in SYSTEMS else None
    if rc == 3 and requeue is not None and requeue():     # interrupted, checkpointed
        subprocess.run(requeue())
    return rc


def main(grid_file: str, out: str, scheduler: str, parallel: int | None = None,
         extra: list[str] | None = None, dry_run: bool = False) -> int:
    """Plan, print what is done and what is left, then submit (or run, ``local``)."""
    if scheduler not in SCHEDULERS:
        raise ConfigError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {scheduler!r}")
    tasks = plan(grid_file, out)
    states = {t.name: grid.state(t) for t in tasks}
    left = [t for t in tasks if states[t.name] != "completed"]
    counts = {s: sum(v == s for v in states.values())
              for s in ("completed", "interrupted", "failed", "pending")}
    print(f"mpisgd sweep: {len(tasks)} tasks in {out}: "
          + ", ".join(f"{n} {s}" for s, n in counts.items() if n), flush=True)
    if not left:
        return 0
    if scheduler == "local":
        failed = [t.name for t in left if run_task(out, t.name, "local") != 0]
        if failed:
            print(f"mpisgd sweep: {len(failed)} of {len(left)} tasks did not complete: "
                  f"{', '.join(failed)}", file=sys.stderr)
            return 1
        return 0
    ids = submit(scheduler, out, left, parallel, extra, dry_run)
    for (group, members), job in zip(groups(left).items(), ids):
        verb = "written" if dry_run else f"submitted as {job}"
        print(f"mpisgd sweep: {group}: {len(members)} tasks, {verb}"
              + (f" ({os.path.join(out, 'jobs', group + '.' + SYSTEMS[scheduler].suffix)})" if not dry_run else ""))
    return 0


if __name__ == "__main__":         # an array task: python -m mpisgd.app.sweep DIR NAME --launcher L
    import argparse
    p = argparse.ArgumentParser(prog="python -m mpisgd.app.sweep")
    p.add_argument("out")
    p.add_argument("name")
    p.add_argument("--launcher", choices=SCHEDULERS, default="local")
    a = p.parse_args()
    try:
        sys.exit(run_task(a.out, a.name, a.launcher))
    except ConfigError as err:
        print(f"mpisgd: error: {err}", file=sys.stderr)
        sys.exit(2)
