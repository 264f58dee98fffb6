"""Checkpoints: every rank's state at one step, written atomically, read without unpickling code.

Layout, in a directory that every rank can reach (a shared filesystem)::

    DIR/step-00000120/rank-00000.pt ... rank-00003.pt    one per rank (torch.save)
    DIR/step-00000120/meta.json                          rank 0's, written last

A checkpoint is written into ``DIR/.step-00000120.tmp``: each rank writes its
file (a temporary name, then a rename), every rank reports success (one
``allgather``), rank 0 writes ``meta.json`` and renames the directory. A
directory without ``meta.json``, or a ``.tmp`` one, is incomplete and never
read; a job killed while writing leaves the previous checkpoint intact.
The newest ``keep`` checkpoints are kept (default 2); checkpoints of later
steps than the one written (left by a continuation abandoned for an older
checkpoint) are removed, so ``--resume DIR`` never picks one.

Rank files hold tensors, numbers, strings and containers of them only and
are read with ``torch.load(weights_only=True)``: loading a checkpoint never
runs code. ``meta.json`` holds the run's configuration, world size, step and
the record's rows so far; :func:`check` compares it with a continuation's.
"""
from __future__ import annotations

import json
import os
import shutil

import torch

from . import storage, streams
from .errors import ConfigError, StorageError

FORMAT = 2
#: Options a continuation may change: they do not change the math of the steps taken.
SAFE_TO_CHANGE = ("steps", "epochs", "log_every", "eval_samples", "out", "threads", "overwrite",
                  "checkpoint_every", "checkpoint_dir", "resume", "on_nonfinite", "device",
                  "deterministic")
_PREFIX = "step-"


def default_dir(out: str) -> str:
    """Checkpoints beside the run record: ``runs/x.h5`` -> ``runs/x.ckpt``."""
    root, ext = os.path.splitext(out)
    return (root if ext == ".h5" else out) + ".ckpt"


def _name(step: int) -> str:
    return f"{_PREFIX}{step:08d}"


def _complete(directory: str) -> list[str]:
    """The complete checkpoints in ``directory``, oldest first."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    found = [n for n in names if n.startswith(_PREFIX)
             and os.path.isfile(os.path.join(directory, n, "meta.json"))]
    return [os.path.join(directory, n) for n in sorted(found)]


def save(comm, directory: str, step: int, state: dict, meta: dict, keep: int = 2) -> str:
    """Write this rank's ``state`` as part of the checkpoint of ``step``; collective.

    ``comm``: a :class:`~mpisgd.comm.Comm` (its ``allgather``); ``meta``: rank 0's
    description of the run (JSON-able). Returns the checkpoint's path. If any rank
    could not write its part (a full disk, a failing filesystem), the partial
    checkpoint is removed, the earlier ones stay, and every rank raises the same
    :class:`~mpisgd.errors.StorageError` naming the checkpoint, the rank and the cause.
    """
    final = os.path.join(directory, _name(step))
    tmp = os.path.join(directory, "." + _name(step) + ".tmp")
    error = None
    try:
        os.makedirs(tmp, exist_ok=True)
        path = os.path.join(tmp, f"rank-{comm.rank:05d}.pt")
        storage.torch_save(state, path + ".part")
        os.replace(path + ".part", path)
    except OSError as err:
        error = f"{storage.cause(err)} (rank {comm.rank})"
    errors = [e for e in comm.allgather(error) if e]
    if errors:
        if comm.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        kept = _complete(directory)
        raise StorageError(f"cannot write the checkpoint {final}: {errors[0]}; "
                           + (f"the last one is kept: {kept[-1]}" if kept else "none was kept"))
    if comm.rank == 0:
        try:
            with storage.writing("the checkpoint", final):
                with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
                    json.dump({"format": FORMAT, "step": step, "world_size": comm.size,
                               "streams": streams.VERSION, **meta}, f)
                old = final + ".old"
                if os.path.exists(final):        # one of this step already: aside, not gone,
                    os.replace(final, old)       # until the new one has its name
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
        except StorageError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        done = _complete(directory)
        later = [p for p in done if p > final]       # an abandoned continuation's (a resume
        earlier = [p for p in done if p <= final]    # from an older step): never the newest
        for old in later + earlier[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def find(path: str) -> str:
    """The checkpoint ``path`` names: itself if complete, else the newest complete one in it."""
    if os.path.isfile(os.path.join(path, "meta.json")):
        return path
    if not os.path.isdir(path):
        raise ConfigError(f"--resume {path}: no such directory")
    found = _complete(path)
    if not found:
        raise ConfigError(f"--resume {path}: no complete checkpoint in it "
                          f"(a {_PREFIX}N directory with a meta.json)")
    return found[-1]


def read_meta(path: str) -> dict:
    """``meta.json`` of checkpoint ``path``; ``ConfigError`` if unreadable."""
    try:
        with open(os.path.join(path, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as err:
        raise ConfigError(f"--resume {path}: cannot read its meta.json ({err})") from None
    if meta.get("format") != FORMAT:
        raise ConfigError(f"--resume {path}: checkpoint format {meta.get('format')!r}, "
                          f"this mpisgd reads {FORMAT}")
    return meta


def check(meta: dict, config: dict, world_size: int, path: str) -> None:
    """``ConfigError`` naming what differs between the checkpointed run and its continuation:
    the rank count, or the first option that changes the math (:data:`SAFE_TO_CHANGE`
    may differ)."""
    drawn = meta.get("streams", 1)
    if drawn != streams.VERSION:
        raise ConfigError(f"--resume {path}: the checkpointed run drew its random streams as "
                          f"version {drawn} (mpisgd < 0.2), this mpisgd draws version "
                          f"{streams.VERSION}: its data order and delays would change mid-run; "
                          "start the run again (docs/user-guide.md, Random streams)")
    if meta["world_size"] != world_size:
        raise ConfigError(f"--resume {path}: the checkpoint is of {meta['world_size']} ranks, "
                          f"this job has {world_size}; resume with the same rank count")
    saved = _math(meta["config"])
    now = _math(json.loads(json.dumps(config, default=str)))
    for key in sorted(set(saved) | set(now), key=lambda k: (k != "algo", k)):   # --algo first
        if key not in saved and now[key] == _default(key):
            continue             # an option newer than the checkpoint, at the behaviour it had
        if saved.get(key) != now.get(key):
            flag = "--" + key.replace("_", "-")
            was = (repr(saved[key]) if key in saved else
                   f"{_default(key)!r} (its default: the checkpoint predates it)")
            raise ConfigError(f"--resume {path}: {flag} was {was} in the checkpointed "
                              f"run, now {now.get(key)!r}; only "
                              f"{', '.join('--' + k.replace('_', '-') for k in SAFE_TO_CHANGE)} "
                              "may change")


def _default(key: str):
    """The default of a general option or an algorithm option (JSON-able)."""
    import dataclasses
    from . import algorithms
    from .app.config import TrainConfig
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    opt = algorithms.all_options().get(key)
    return fields[key] if key in fields else (opt.default if opt is not None else None)


def _math(config: dict) -> dict:
    """The options that change the math, algorithm options flattened beside the others."""
    flat = {k: v for k, v in config.items() if k not in SAFE_TO_CHANGE and k != "options"}
    flat.update(config.get("options", {}))
    return flat


def load(path: str, rank: int) -> dict:
    """Rank ``rank``'s state in checkpoint ``path`` (on the CPU; nothing but data unpickled).

    ``ConfigError`` naming the file when it is missing, empty, truncated, corrupt or holds
    more than data, and the other checkpoints to resume from."""
    name = os.path.join(path, f"rank-{rank:05d}.pt")
    try:
        return torch.load(name, map_location="cpu", weights_only=True)
    except Exception as err:      # EOFError, KeyError, OSError(EINVAL): torch has no one type
        others = [p for p in _complete(os.path.dirname(os.path.abspath(path)))
                  if os.path.basename(p) != os.path.basename(os.path.abspath(path))]
        hint = (f"resume from another checkpoint (--resume {others[-1]})" if others else
                "no other checkpoint is there: start the run again")
        raise ConfigError(f"--resume {path}: {name} cannot be read ({_damage(name, err)}); "
                          f"{hint}") from None


def _damage(name: str, err: Exception) -> str:
    """What is wrong with rank file ``name``, which ``torch.load`` refused with ``err``."""
    if not os.path.exists(name):
        return "it is missing"
    if os.path.getsize(name) == 0:
        return "it is empty"
    if "weights only" in str(err).lower():
        return "it holds objects other than tensors, numbers and strings, never unpickled here"
    said = str(err).splitlines()[0] if str(err) else ""
    return (f"truncated or not a checkpoint, {os.path.getsize(name)} bytes; torch.load: "
            f"{type(err).__name__}{': ' + said if said else ''}")
