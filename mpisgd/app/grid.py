"""A study's grid: a YAML file of configuration keys plus ``grid:``, expanded into tasks.

The file holds ordinary ``mpisgd train`` keys (the base configuration), the
study keys below, and a ``grid:`` mapping from a key to a list of values::

    algo: local
    steps: 400
    ranks: 4                 # study key: the rank count (default 4)
    grid:
      tau: [1, 8, 32]
      ranks: [2, 4]
      seed: [0, 1, 2]

Expansion is the cartesian product of the grid's lists, in the file's key
order, the last key varying fastest (``itertools.product``): the example is
3 x 2 x 3 = 18 tasks. A value may be a mapping, a bundle of keys set
together (``algo: [sync, {algo: k-sync, k: 2}]``: K only where it applies). Study keys, in the base or the grid:

* ``ranks``: MPI ranks of the task (its workers are what the algorithm makes
  of them: ps and easgd keep one rank for the centre);
* ``time``: the task's time limit, ``HH:MM:SS``, ``MM:SS`` or minutes (default
  30 minutes); the scheduler's array for it asks for that much;
* ``cpus``: cores per rank asked of the scheduler (default 1).

A task's name is its grid values, ``tau-8_ranks-4_seed-0``: it names its
record, ``DIR/runs/NAME.h5``, and its checkpoints, ``DIR/checkpoints/NAME``;
a task keeps its name when values are added to the grid, so a grown study
reruns only what is new. Every configuration is validated when the grid is
loaded (:meth:`~mpisgd.app.config.TrainConfig.validate` and the algorithm's
rank count), so a bad value stops the study before anything is submitted.

A task's state is read off its files (:func:`state`): ``completed`` (the
record says so: skipped), ``interrupted`` (a checkpoint exists: resumed from
it), ``failed`` or ``pending`` (run from the start, replacing the record).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import warnings
from dataclasses import dataclass

from ..errors import ConfigError

STUDY_KEYS = {"ranks": 4, "time": "00:30:00", "cpus": 1}
MANIFEST = "manifest.json"


@dataclass
class Task:
    """One configuration of a study: what runs, on how many ranks, where it writes."""
    name: str
    ranks: int
    time: str                  #: HH:MM:SS
    cpus: int
    config: dict               #: ``mpisgd train`` keys, out and checkpoint_dir included
    values: dict               #: the grid's values for this task

    @property
    def record(self) -> str:
        return self.config["out"]

    @property
    def checkpoints(self) -> str:
        return self.config["checkpoint_dir"]

    @property
    def seconds(self) -> int:
        h, m, s = (int(x) for x in self.time.split(":"))
        return 3600 * h + 60 * m + s


def _key(name) -> str:
    """A grid file's key as the option it names (``batch-size`` is ``batch_size``)."""
    return str(name).replace("-", "_")


def load(path: str) -> tuple[dict, dict]:
    """``(base, grid)`` from a grid file; ``ConfigError`` naming the file and the problem."""
    from .config import read_mapping
    loaded = read_mapping(path, path, f"no such grid file: {path}",
                          "a mapping of key: value with a grid: mapping")
    base = {_key(k): v for k, v in loaded.items() if k != "grid"}
    grid = loaded.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError(f"{path}: grid: must map a key to a list of values")
    out = {}
    for key, values in grid.items():
        values = values if isinstance(values, list) else [values]
        if not values:
            raise ConfigError(f"{path}: grid: {key} has no values")
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{path}: grid: {key} repeats a value: {values}")
        out[_key(key)] = values
    both = sorted(set(base) & set(out) - set(STUDY_KEYS))
    if both:
        raise ConfigError(f"{path}: {both[0]} is both a key and in grid:; keep one")
    for key in ("out", "resume", "checkpoint_dir", "overwrite"):
        if key in base or key in out:
            raise ConfigError(f"{path}: {key} is set by the study (DIR/runs, DIR/checkpoints); "
                              "remove it")
    return base, out


def name_of(values: dict) -> str:
    """``tau-8_ranks-4_seed-0``: the grid's values, safe as a file name."""
    if not values:
        return "run"
    def safe(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9.+-]+", "-", text)
    parts = []
    for k, v in values.items():
        items = v.items() if isinstance(v, dict) else [(k, v)]
        parts += [safe(f"{str(a).replace('_', '-')}-{b}") for a, b in items]
    return "_".join(parts)


def expand(base: dict, grid: dict, out: str) -> list[Task]:
    """The tasks of ``base`` x ``grid`` (cartesian product), each validated, writing under
    ``out``; ``ConfigError`` naming the task and its problem."""
    from .config import from_sources
    tasks, seen = [], {}
    out = os.path.abspath(out)         # array tasks start elsewhere
    keys = list(grid)
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = dict(zip(keys, combo))
        merged = dict(base)
        for key, value in values.items():   # a mapping is a bundle of keys set together
            merged.update({_key(k): v for k, v in value.items()}
                          if isinstance(value, dict) else {key: value})
        study = {k: merged.pop(k, default) for k, default in STUDY_KEYS.items()}
        name = name_of(values)
        if name in seen:
            raise ConfigError(f"grid: {values} and {seen[name]} have the same name {name!r}")
        seen[name] = values
        ranks, cpus = study["ranks"], study["cpus"]
        for key, value in (("ranks", ranks), ("cpus", cpus)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"task {name}: {key} must be a positive integer, got {value!r}")
        merged["out"] = os.path.join(out, "runs", f"{name}.h5")
        merged["checkpoint_dir"] = os.path.join(out, "checkpoints", name)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cfg = from_sources(None, merged)
                cfg.validate()
                cfg.spec.workers(ranks)
        except (ConfigError, ValueError) as err:
            said = err.flagged() if hasattr(err, "flagged") else str(err)   # --k, not k
            raise ConfigError(f"task {name}: {said}") from None
        tasks.append(Task(name, ranks, parse_time(study["time"], name), cpus, merged, values))
    return tasks


def parse_time(value, name: str = "") -> str:
    """``HH:MM:SS`` from ``HH:MM:SS``, ``MM:SS`` or a number of minutes."""
    where = f"task {name}: " if name else ""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        seconds = int(round(value * 60))
    elif isinstance(value, str) and re.fullmatch(r"\d+(:\d{1,2}){1,2}", value.strip()):
        parts = [int(p) for p in value.strip().split(":")]
        parts = [0] * (3 - len(parts)) + parts
        seconds = 3600 * parts[0] + 60 * parts[1] + parts[2]
    else:
        raise ConfigError(f"{where}time must be HH:MM:SS, MM:SS or minutes, got {value!r}")
    if seconds <= 0:
        raise ConfigError(f"{where}time must be positive, got {value!r}")
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def state(task: Task) -> str:
    """``completed``, ``interrupted`` (a checkpoint to resume), ``failed`` or ``pending``."""
    from .. import checkpoint
    from . import record
    if os.path.exists(task.record):
        try:
            status = record.read(task.record)["attrs"].get("status", "")
        except OSError:
            status = "failed"
        if status == "completed":
            return "completed"
    else:
        status = None
    try:
        checkpoint.find(task.checkpoints)
        return "interrupted"
    except ConfigError:
        pass
    return "pending" if status is None else "failed"


def train_args(task: Task, config_file: str) -> list[str]:
    """``mpisgd train`` arguments that run ``task`` from where its files leave it."""
    args = ["--config", config_file]
    now = state(task)
    if now == "interrupted":
        args += ["--resume", task.checkpoints]
    elif now == "failed":
        args += ["--overwrite"]
    return args


def write(out: str, grid_file: str, tasks: list[Task]) -> str:
    """Write each task's configuration (``DIR/configs/NAME.yaml``) and the manifest
    (``DIR/manifest.json``); ``ConfigError`` when a task of the same name was planned with
    another configuration (a changed base: use another DIR)."""
    import yaml
    os.makedirs(os.path.join(out, "configs"), exist_ok=True)
    for sub in ("runs", "checkpoints", "logs"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    for task in tasks:
        path = config_file(out, task)
        text = yaml.safe_dump(task.config, sort_keys=True)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                if f.read() != text:
                    raise ConfigError(f"{out}: task {task.name} was planned with another "
                                      f"configuration ({path}); use another --out, or remove it")
            continue
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    manifest = os.path.join(out, MANIFEST)
    body = {"grid": os.path.abspath(grid_file),
            "tasks": [{**dataclasses.asdict(t), "record": t.record, "config_file": config_file(out, t)}
                      for t in tasks]}
    tmp = manifest + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(body, f, indent=1, default=str)
    os.replace(tmp, manifest)
    return manifest


def read(out: str) -> list[Task]:
    """The tasks of the manifest in ``out``."""
    path = os.path.join(out, MANIFEST)
    if not os.path.exists(path):
        raise ConfigError(f"{out}: no {MANIFEST}; plan the study first (mpisgd sweep GRID.yaml "
                          f"--out {out})")
    with open(path, encoding="utf-8") as f:
        body = json.load(f)
    fields = {f.name for f in dataclasses.fields(Task)}
    return [Task(**{k: v for k, v in t.items() if k in fields}) for t in body["tasks"]]


def config_file(out: str, task: Task) -> str:
    return os.path.join(out, "configs", f"{task.name}.yaml")
