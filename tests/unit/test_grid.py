"""A study's grid: expansion, names, validation, manifest, task state and the array scripts.

The runs that make a task completed, failed or interrupted are real: the
launch tests (tests/launch/test_sweep.py, test_slurm.py) run them; here the
states that need no run (pending) and the files the plan writes.
"""
import json
import os
import subprocess

import pytest

from mpisgd.app import grid, sweep
from mpisgd.errors import ConfigError


def write(tmp_path, text, name="grid.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


GRID = """
algo: local
steps: 10
ranks: 2
grid:
  tau: [1, 4, 8]
  ranks: [2, 4]
  seed: [0, 1]
"""


def test_the_grid_is_the_cartesian_product_in_file_order(tmp_path):
    base, values = grid.load(write(tmp_path, GRID))
    tasks = grid.expand(base, values, str(tmp_path / "study"))
    assert len(tasks) == 3 * 2 * 2
    assert [t.values for t in tasks[:3]] == [{"tau": 1, "ranks": 2, "seed": 0},
                                             {"tau": 1, "ranks": 2, "seed": 1},
                                             {"tau": 1, "ranks": 4, "seed": 0}]
    assert tasks[0].name == "tau-1_ranks-2_seed-0"
    assert [t.ranks for t in tasks[:4]] == [2, 2, 4, 4]
    t = tasks[-1]
    assert t.config["tau"] == 8 and t.config["seed"] == 1 and "ranks" not in t.config
    assert t.record == str(tmp_path / "study" / "runs" / "tau-8_ranks-4_seed-1.h5")
    assert t.checkpoints == str(tmp_path / "study" / "checkpoints" / "tau-8_ranks-4_seed-1")
    assert t.time == "00:30:00" and t.cpus == 1


def test_names_are_safe_file_names_and_stable_when_the_grid_grows(tmp_path):
    assert grid.name_of({"compress": "topk:0.1", "batch_size": 16}) == "compress-topk-0.1_batch-size-16"
    small = grid.expand(*grid.load(write(tmp_path, "steps: 5\ngrid:\n  seed: [0]\n")), "d")
    big = grid.expand(*grid.load(write(tmp_path, "steps: 5\ngrid:\n  seed: [0, 1]\n")), "d")
    assert small[0].name == big[0].name == "seed-0"


@pytest.mark.parametrize("value, expected", [
    ("01:02:03", "01:02:03"), ("10:00", "00:10:00"), (90, "01:30:00"), (0.5, "00:00:30")])
def test_time_limits(value, expected):
    assert grid.parse_time(value) == expected


@pytest.mark.parametrize("text, needle", [
    ("grid:\n  tau: []\n", "grid: tau has no values"),
    ("grid:\n  seed: [1, 1]\n", "grid: seed repeats a value"),
    ("grid: [1, 2]\n", "grid: must map a key to a list"),
    ("seed: 1\ngrid:\n  seed: [1, 2]\n", "seed is both a key and in grid:"),
    ("out: x.h5\n", "out is set by the study"),
    ("grid:\n  tua: [1]\n", "task tua-1: unknown key 'tua'"),
    ("algo: local\ngrid:\n  tau: [0, 2]\n", "task tau-0: --tau must be a positive integer, got 0"),
    ("algo: ps-sync\ngrid:\n  ranks: [1, 2]\n", "task ranks-1: algorithm ps-sync needs at least 2 ranks"),
    ("grid:\n  ranks: [0]\n", "task ranks-0: ranks must be a positive integer, got 0"),
    ("algo: k-sync\nk: 2\ngrid:\n  ranks: [3, 2]\n",
     "task ranks-2: --k must be at most the number of workers (1) for k-sync"),
    ("time: soon\n", "time must be HH:MM:SS, MM:SS or minutes, got 'soon'"),
    ("- 1\n", "expected a mapping"),
])
def test_a_bad_grid_is_refused_naming_the_task_and_the_key(tmp_path, text, needle):
    with pytest.raises(ConfigError) as err:
        grid.expand(*grid.load(write(tmp_path, text)), str(tmp_path / "d"))
    assert needle in str(err.value)


def test_a_missing_grid_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="no such grid file: /no/such.yaml"):
        grid.load("/no/such.yaml")


def test_the_plan_writes_configs_and_a_manifest_that_reads_back(tmp_path):
    out = str(tmp_path / "study")
    tasks = sweep.plan(write(tmp_path, GRID), out)
    again = grid.read(out)
    assert [t.name for t in again] == [t.name for t in tasks]
    assert again[5].config == tasks[5].config and again[5].ranks == tasks[5].ranks
    body = json.load(open(os.path.join(out, "manifest.json")))
    assert body["tasks"][0]["config_file"] == os.path.join(out, "configs", "tau-1_ranks-2_seed-0.yaml")
    for sub in ("runs", "checkpoints", "logs"):
        assert os.path.isdir(os.path.join(out, sub))
    assert [grid.state(t) for t in tasks] == ["pending"] * len(tasks)
    assert grid.train_args(tasks[0], "c.yaml") == ["--config", "c.yaml"]
    sweep.plan(write(tmp_path, GRID), out)                # the same plan again: fine
    with pytest.raises(ConfigError, match="planned with another configuration"):
        sweep.plan(write(tmp_path, GRID.replace("steps: 10", "steps: 20")), out)


def test_tasks_group_into_one_array_per_rank_count_and_time_limit(tmp_path):
    tasks = grid.expand(*grid.load(write(tmp_path, GRID)), str(tmp_path / "d"))
    groups = sweep.groups(tasks)
    assert {g: len(m) for g, m in groups.items()} == {"r2-c1-t003000": 6, "r4-c1-t003000": 6}


@pytest.mark.parametrize("scheduler, needles", [
    ("slurm", ["#SBATCH --array=0-5%2", "#SBATCH --ntasks=4", "#SBATCH --time=00:30:00",
               "#SBATCH --signal=USR1@120", "SLURM_ARRAY_TASK_ID + 1", "--launcher slurm"]),
    ("pbs", ["#PBS -J 0-5", "#PBS -l select=4:ncpus=1:mpiprocs=1", "#PBS -l walltime=00:30:00",
             "PBS_ARRAY_INDEX", "--launcher pbs"]),
    ("lsf", ['#BSUB -J "mpisgd-r4-c1-t003000[1-6]%2"', "#BSUB -n 4", "#BSUB -W 0:30",
             "LSB_JOBINDEX", '#BSUB -Q "3"', "--launcher lsf"]),
])
def test_array_scripts_are_valid_bash_with_the_scheduler_directives(tmp_path, scheduler, needles):
    out = str(tmp_path / "d")
    tasks = sweep.plan(write(tmp_path, GRID), out)
    paths = sweep.submit(scheduler, out, tasks, parallel=2, dry_run=True)
    assert len(paths) == 2
    text = open(paths[1]).read()
    for needle in needles:
        assert needle in text
    assert subprocess.run(["bash", "-n", paths[1]]).returncode == 0
    listing = open(os.path.join(out, "jobs", "r4-c1-t003000.tasks")).read().split()
    assert listing == [t.name for t in tasks if t.ranks == 4]


def test_submitting_without_the_scheduler_command_names_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    out = str(tmp_path / "d")
    tasks = sweep.plan(write(tmp_path, GRID), out)
    with pytest.raises(ConfigError, match="--scheduler pbs: no qsub on PATH"):
        sweep.submit("pbs", out, tasks)


def test_srun_speaks_the_pmi_of_the_mpi():
    from mpisgd.mpienv import srun_mpi
    assert srun_mpi("MPICH Version: 5.0.2") == "pmi2"
    assert srun_mpi("Intel(R) MPI Library 2021.10") == "pmi2"
    assert srun_mpi("Open MPI v5.0.3, package: Open MPI") == "pmix"


def test_a_mapping_value_sets_several_keys_together(tmp_path):
    text = "steps: 5\ngrid:\n  algo: [sync, {algo: k-sync, k: 2}]\n  ranks: [3]\n"
    tasks = grid.expand(*grid.load(write(tmp_path, text)), str(tmp_path / "d"))
    assert [t.name for t in tasks] == ["algo-sync_ranks-3", "algo-k-sync_k-2_ranks-3"]
    assert tasks[1].config["k"] == 2 and "k" not in tasks[0].config
