"""The batch systems a sweep submits job arrays to: Slurm, PBS Pro and LSF, one object each.

A :class:`BatchSystem` says what differs between them: the script's suffix,
its header lines for an array of tasks, the shell expression of the task's
line in the task list, the command that submits it and whether that command
reads the script from its standard input (``bsub``). The script's body is
the same for all (:func:`mpisgd.app.sweep.script`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Array:
    """One job array: ``n`` tasks of ``ranks`` ranks, ``cpus`` cores each, ``time`` (H:MM:SS),
    named ``name``, its logs under ``logs``; at most ``parallel`` at once (``None``: no cap)."""
    name: str
    n: int
    ranks: int
    cpus: int
    time: str
    seconds: int
    logs: str
    parallel: int | None = None


@dataclass(frozen=True)
class BatchSystem:
    """What a sweep needs to know of one batch system."""
    name: str
    suffix: str                                   # of the job script: GROUP.SUFFIX
    submit_argv: tuple[str, ...]                  # the submitting command, the script after it
    header: Callable[[Array], list[str]]          # the script's directives
    index: str                                    # shell: the task's 1-based line in the list
    stdin: bool = False                           # the command reads the script from stdin
    #: The command that starts ``ranks`` ranks of a task (``None``: the MPI's own mpiexec,
    #: which reads the allocation from the batch system's environment).
    launch: Callable[[int], list[str]] | None = None
    #: The command that puts an interrupted task back in the queue (``None``: none).
    requeue: Callable[[], list[str]] | None = None


def _slurm(a: Array) -> list[str]:
    warn = max(10, min(120, a.seconds // 10))     # the warning signal, seconds before the end
    return [f"#SBATCH --job-name={a.name}",
            f"#SBATCH --array=0-{a.n - 1}" + (f"%{a.parallel}" if a.parallel else ""),
            f"#SBATCH --ntasks={a.ranks}", f"#SBATCH --cpus-per-task={a.cpus}",
            f"#SBATCH --time={a.time}", f"#SBATCH --signal=USR1@{warn}",
            "#SBATCH --requeue", "#SBATCH --open-mode=append",
            f"#SBATCH --output={a.logs}/%x-%A_%a.out"]


def _pbs(a: Array) -> list[str]:
    return [f"#PBS -N {a.name}"[:236], *([f"#PBS -J 0-{a.n - 1}"] if a.n > 1 else []),
            f"#PBS -l select={a.ranks}:ncpus={a.cpus}:mpiprocs=1",
            f"#PBS -l walltime={a.time}", "#PBS -j oe", f"#PBS -o {a.logs}/", "#PBS -r y"]


def _lsf(a: Array) -> list[str]:
    h, m, _ = a.time.split(":")
    return [f'#BSUB -J "{a.name}[1-{a.n}]' + (f"%{a.parallel}" if a.parallel else "") + '"',
            f"#BSUB -n {a.ranks}", f"#BSUB -W {int(h)}:{m}", f"#BSUB -o {a.logs}/%J_%I.out",
            "#BSUB -wa USR1", "#BSUB -wt 2", '#BSUB -Q "3"']


def _srun(ranks: int) -> list[str]:
    """srun places the ranks on the allocation, delivers ``--signal`` to them and accounts
    them; its PMI is the one this MPI speaks (:func:`mpisgd.mpienv.srun_mpi`)."""
    from ..mpienv import srun_mpi
    return ["srun", f"--mpi={os.environ.get('SRUN_MPI') or srun_mpi()}", "-n", str(ranks)]


def _scontrol_requeue() -> list[str]:
    job = os.environ.get("SLURM_JOB_ID")
    return ["scontrol", "requeue", job] if job else []


SLURM = BatchSystem("slurm", "sbatch", ("sbatch", "--parsable"), _slurm,
                    "$((SLURM_ARRAY_TASK_ID + 1))", launch=_srun, requeue=_scontrol_requeue)
PBS = BatchSystem("pbs", "pbs", ("qsub",), _pbs, "$(( ${PBS_ARRAY_INDEX:-0} + 1 ))")
LSF = BatchSystem("lsf", "bsub", ("bsub",), _lsf, "${LSB_JOBINDEX:-1}", stdin=True)

#: The batch systems by ``--scheduler`` name.
SYSTEMS = {s.name: s for s in (SLURM, PBS, LSF)}
