"""Before training, on every rank: the configuration checked, the data, shards and model, the
record's path claimed, a checkpoint to resume from read, and all of it agreed.

Nothing here communicates but :func:`prepare`'s node layout and its one
``allgather`` (:func:`~mpisgd.errors.agree`): a problem on any rank ends
every rank with its message, before the algorithm exists.
"""
from __future__ import annotations

import math
import os
import zlib
from datetime import datetime

import torch

from .. import checkpoint, data as datasets, device as placement, models, storage, streams
from .. import precision as mixed
from .._mpi import MPI
from ..errors import ConfigError, agree, digest
from ..mpienv import check_environment, check_launch
from .config import TrainConfig
from .sidecars import claim


def threads_for(comm, requested: int | None) -> int:
    """Cores available to this rank: the node's cores shared by its ranks."""
    if requested:
        return requested
    local = placement.node_layout(comm)[1]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // local)


def _default_out(algo: str) -> str:
    return os.path.join("runs", f"{algo}-{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.h5")


def writable(path: str, overwrite: bool = False, resume: bool = False) -> str:
    """``path`` if rank 0 can create the run record there and may: the record is then this
    run's, locked (:func:`~mpisgd.app.sidecars.claim`). ``ConfigError`` naming --out if not:
    a directory, not writable, an existing file without --overwrite or --resume, or a
    record another job is writing."""
    if os.path.isdir(path):
        raise ConfigError(f"--out {path} is a directory; give a file name such as {path}/run.h5")
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--out {path}: cannot create directory {parent} ({err.strerror})") from None
    try:
        claim(path, overwrite, resume)
        storage.probe(parent)        # each version is a new file renamed over the record:
    except OSError as err:           # never create the record's own name (a reader meets it)
        raise ConfigError(f"--out {path}: cannot write it ({err.strerror})") from None
    return path


def prepare(cfg: TrainConfig, comm):
    """Validate and load everything on every rank; agree; return the pieces.

    Raises ``ConfigError`` on every rank if any rank found a problem.
    """
    error, key, pieces = None, "", None
    node_ranks = placement.node_layout(comm)[1]     # every rank: for group_size node
    try:
        check_environment()
        check_launch(MPI.COMM_WORLD.Get_size())
        cfg.validate()
        placement.check_available(cfg.device)
        mixed.check_device(cfg.precision,       # --device auto: a GPU where torch sees one
                           placement.choose(cfg.device, 0, torch.cuda.device_count()))
        data = datasets.load(cfg.data, models.context(cfg.model))
        try:
            workers = cfg.spec.replicas(comm.Get_size(), node_ranks)   # each its own data
        except ValueError as err:
            raise ConfigError(str(err)) if not isinstance(err, ConfigError) else err from None
        shards = datasets.shard(data.y_train, workers, cfg.seed, cfg.shard, cfg.skew_alpha)
        torch.manual_seed(streams.torch_seed(streams.INIT, cfg.seed))   # the initial model
        model = models.build(cfg.model, data.input_shape, data.classes)
        try:                         # the model must accept the data: one sample, here, not mid-run
            with torch.no_grad():
                model(data.x_train[:1])
        except RuntimeError as err:
            raise ConfigError(f"--model {cfg.model} does not fit --data {cfg.data} "
                              f"(inputs of shape {tuple(data.input_shape)}): {err}") from None
        if cfg.epochs is not None:
            cfg.steps = max(1, math.ceil(cfg.epochs * len(data.y_train)
                                         / (workers * cfg.batch_size * cfg.accumulate)))
        cfg.steps = cfg.steps or 300
        cfg.log_every = cfg.log_every or max(1, cfg.steps // 20)
        cfg.eval_samples = min(len(data.y_test), cfg.eval_samples or
                               math.ceil(workers * cfg.log_every * cfg.batch_size
                                         * cfg.accumulate / 4))
        if comm.Get_rank() == 0:
            cfg.out = writable(cfg.out or _default_out(cfg.algo), cfg.overwrite, bool(cfg.resume))
        storage.check_dir(cfg.checkpoint_dir or checkpoint.default_dir(  # every rank writes there
            cfg.out or _default_out(cfg.algo)), "--checkpoint-dir")
        resume = _resumable(cfg, comm.Get_rank(), comm.Get_size()) if cfg.resume else None
        pieces = data, shards, model, resume
        key = digest({"config": {k: v for k, v in cfg.resolved().items() if k not in ("out", "threads")},
                      "data": [len(data.y_train), len(data.y_test), list(data.input_shape),
                               zlib.crc32(data.y_train.numpy().tobytes())]})
    except ConfigError as err:   # an OptionError keeps the option's name through agree()
        error = err
    except Exception as err:     # anything else found before training: every rank must hear it
        error = f"{type(err).__name__}: {err}"
    agree(comm, error, key)
    return pieces


def _resumable(cfg: TrainConfig, rank: int, size: int) -> tuple[dict, dict]:
    """The meta of the checkpoint ``--resume`` names, checked against this run, and this
    rank's state in it (read here, before any communication: a corrupt file is named)."""
    path = checkpoint.find(cfg.resume)
    meta = checkpoint.read_meta(path)
    checkpoint.check(meta, cfg.resolved(), size, path)
    if meta["step"] >= cfg.steps:
        raise ConfigError(f"--resume {path}: the run is at step {meta['step']} of --steps "
                          f"{cfg.steps}, nothing is left to do; raise --steps to continue it")
    return meta, checkpoint.load(path, rank)
