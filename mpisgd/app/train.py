"""The training driver behind ``python -m mpisgd train``.

Launch (every rank runs this same code)::

    mpiexec -n 4 python -m mpisgd train --algo local --tau 8 --steps 500

Order of events, on every rank:

1. validate the configuration, load the data, shard it, build the model —
   no communication; then :func:`~mpisgd.errors.agree` (one allgather) so a
   problem on any rank ends every rank with its message;
2. build the algorithm (rank 0's initial parameters are broadcast);
3. train: worker w's batch at step t depends only on (seed, w, t); at each
   log point the consensus model is evaluated on the test set (split over
   the ranks) and rank 0 appends a row to the HDF5 record. ``wall_time``
   counts training only: the clock is paused during evaluation;
4. ``finish()``, a last log point, per-rank counters, the final model.

Rank 0 shows progress — a bar on a terminal, or, in a batch log, one line
per log point at most every 10 s — and prints a one-line summary; other
ranks are quiet.
"""
from __future__ import annotations

import math
import os
import sys
import time
import warnings
import zlib
from datetime import datetime

import numpy as np
import torch
import torch.nn.functional as F

from .. import __version__, checkpoint, data as datasets, device as placement, models, ops, \
    storage, streams
from .._mpi import MPI
from ..errors import ConfigError, agree, digest
from ..mpienv import check_environment, check_launch, mpi_library, setting
from .config import TrainConfig
from .health import stalled
from .record import METRICS, RANK_FIELDS, KeptWarnings, RunRecord, claim
from .report import paid
from .stops import Diverged, Interrupted, LossWatch, RunStopped, Signals, StopVote, signal_name, \
    vote_code


def _threads(comm, requested: int | None) -> int:
    """Cores available to this rank: the node's cores shared by its ranks."""
    if requested:
        return requested
    local = placement.node_layout(comm)[1]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // local)


def _default_out(algo: str) -> str:
    return os.path.join("runs", f"{algo}-{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.h5")


def _writable(path: str, overwrite: bool = False, resume: bool = False) -> str:
    """``path`` if rank 0 can create the run record there and may: the record is then this
    run's, locked (:func:`~mpisgd.app.record.claim`). ``ConfigError`` naming --out if not:
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
        data = datasets.load(cfg.data)
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
            cfg.steps = max(1, math.ceil(cfg.epochs * len(data.y_train) / (workers * cfg.batch_size)))
        cfg.steps = cfg.steps or 300
        cfg.log_every = cfg.log_every or max(1, cfg.steps // 20)
        cfg.eval_samples = min(len(data.y_test), cfg.eval_samples or
                               math.ceil(workers * cfg.log_every * cfg.batch_size / 4))
        if comm.Get_rank() == 0:
            cfg.out = _writable(cfg.out or _default_out(cfg.algo), cfg.overwrite, bool(cfg.resume))
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


class Evaluator:
    """Test loss and error of the consensus model on ``cfg.eval_samples`` test samples.

    The samples are a seeded subset of the test set (stream ``EVAL_SUBSET``),
    the same at every log point, split over the ranks and held on ``device``;
    one device-to-host copy per evaluation. The default size (:func:`prepare`)
    is a quarter of the samples the workers train on between two log points:
    a sample's forward pass costs less than its training step (0.3-0.4 of it
    for the CNN and ResNet-20 on a CPU, 0.1 for the MLP), so evaluation
    takes under 20% of a run's time (about 10% there). :attr:`seconds` sums
    the time spent in evaluations.
    """

    def __init__(self, cfg: TrainConfig, data, comm, device):
        self.model = models.build(cfg.model, data.input_shape, data.classes).to(device)
        self.params = list(self.model.parameters())
        self.buffers = [b for b in self.model.buffers() if b.is_floating_point()]
        n = len(data.y_test)
        chosen = np.arange(n) if cfg.eval_samples >= n else \
            np.sort(streams.generator(streams.EVAL_SUBSET, cfg.seed).permutation(n)[:cfg.eval_samples])
        mine = torch.from_numpy(chosen[comm.rank::comm.size])
        self.x, self.y = data.x_test[mine].to(device), data.y_test[mine].to(device)
        # CPU caches favour small batches (a ResNet-20 evaluates 2x faster per sample at 128
        # than at 1024); a GPU wants large ones
        self.comm, self.batch = comm, 1024 if device.type == "cuda" else 128
        self.seconds = 0.0

    @torch.no_grad()
    def __call__(self, params: torch.Tensor, buffers: torch.Tensor) -> tuple[float, float]:
        t0 = time.perf_counter()
        torch.nn.utils.vector_to_parameters(params.to(self.params[0].dtype), self.params)
        if self.buffers:
            torch.nn.utils.vector_to_parameters(buffers, self.buffers)
        self.model.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.x.device)
        for i in range(0, len(self.y), self.batch):
            out = self.model(self.x[i:i + self.batch])
            y = self.y[i:i + self.batch]
            sums[0] += F.cross_entropy(out, y, reduction="sum")
            sums[1] += (out.argmax(1) != y).sum()
        sums[2] = len(self.y)
        sums = self.comm.allreduce(sums.cpu())
        n = max(sums[2].item(), 1.0)
        self.seconds += time.perf_counter() - t0
        return sums[0].item() / n, sums[1].item() / n


def run(cfg: TrainConfig, comm, quiet: bool = False) -> dict:
    """Train as ``cfg`` says on communicator ``comm``; returns rank 0's summary (others: {}).

    Raises :class:`~mpisgd.app.stops.Interrupted` (a signal; a checkpoint was
    written) or :class:`~mpisgd.app.stops.Diverged` on every rank alike.
    """
    threads = torch.get_num_threads()     # the run sets its own; the caller gets theirs back
    try:
        with Signals() as signals, KeptWarnings() as kept, \
                placement.deterministic(cfg.deterministic):
            return _run(cfg, comm, quiet, signals, kept)    # a signal in set-up stops at step 1
    finally:
        torch.set_num_threads(threads)


def _run(cfg: TrainConfig, comm, quiet: bool, signals: Signals, kept: KeptWarnings) -> dict:
    rank, size = comm.Get_rank(), comm.Get_size()
    data, shards, model, resume = prepare(cfg, comm)
    cfg.out = comm.bcast(cfg.out, root=0)          # the default name is rank 0's
    torch.set_num_threads(_threads(comm, cfg.threads))
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    try:
        algo = cfg.spec.bind(model, opt, comm, device=cfg.device)
    except ValueError as err:    # raised on every rank alike, before any message
        raise err if isinstance(err, ConfigError) else ConfigError(str(err)) from None
    meta, state = resume or (None, None)
    if state is not None:
        algo.load_state_dict(state["algorithm"])
    record = None
    if rank == 0:
        rows = {k: [r[k] for r in meta["rows"]] for k in METRICS} if meta else None
        record = RunRecord(cfg.out, cfg.resolved(), size, algo.workers, mpi_library(), __version__,
                           rows=rows)
    try:
        return _train(cfg, comm, algo, model, opt, data, shards, record, quiet, signals, kept,
                      {**state["driver"], "rows": meta["rows"]} if state else None)
    except RunStopped as err:    # on every rank alike, at the same point: close collectively
        algo.close()
        if record is not None:
            with record.edit():
                kept.into(record)
                record.stopped(err.status)
        raise
    except BaseException as err:
        if record is not None:
            record.fail(f"{type(err).__name__}: {err}")
        raise


def _train(cfg, comm, algo, model, opt, data, shards, record, quiet, signals, kept,
           resumed: dict | None) -> dict:
    rank = comm.Get_rank()
    device = algo.device
    cuda = device.type == "cuda"
    telemetry = algo.telemetry   # every collective of the driver: uncounted, in the algorithm's order
    evaluate = Evaluator(cfg, data, telemetry, device)
    progress = Progress(cfg.steps, f"{cfg.algo} x{algo.workers}", enabled=(rank == 0 and not quiet))
    watch = LossWatch(device)
    ckpt_dir = cfg.checkpoint_dir or checkpoint.default_dir(cfg.out)
    rows = []                    # rank 0: the record's rows, for checkpoints
    first_loss = None            # the workers' mean loss of step 1 (for the stall check)
    step = 0
    paused = 0.0
    row = {}
    telemetry.barrier()
    start = time.perf_counter()
    base = algo.stats()          # counters from the start barrier (set-up traffic excluded)
    if resumed is not None:      # the clock, counters and interval go on from the checkpoint
        step, base, first_loss = resumed["step"], resumed["base"], resumed["first_loss"]
        start -= resumed["train_time"]
        watch.load_state_dict(resumed["losses"])
        rows = [dict(r) for r in resumed["rows"]] if rank == 0 else []
        progress.update(step)
    algo.clock = lambda: time.perf_counter() - start - paused     # schedules: training time

    def position() -> int:
        """The step checkpoints and stops are named by, the same on every rank: rounds x tau
        under a wall-clock budget (ranks take different numbers of steps), else the step."""
        return algo.rounds * algo.period if algo.is_worker and algo.rounds_based else step

    next_checkpoint = _next_multiple(position(), cfg.checkpoint_every)

    def log_point(point: int, draft: bool = False) -> str | None:
        """Every rank: evaluate the consensus, rank 0 records; the clock stops meanwhile.
        Returns the signal any rank received (voted in the log point's Allreduce).
        ``draft``: the last step's row before ``finish()``, for its checkpoint only (the
        row a longer run logs there); the record gets the row after ``finish()``."""
        nonlocal paused, row, first_loss
        if cuda:                 # training time ends when its kernels have, not when queued
            torch.cuda.synchronize(device)
        t_log = time.perf_counter()
        row, health, vote = _log_point(algo, evaluate, point, t_log - start - paused, watch,
                                       base["bytes_sent"], signals, step)
        first_loss = row.pop("first_loss", first_loss)
        if record is not None:
            if rows and rows[-1]["step"] == point:     # the draft of this point
                rows.pop()
            rows.append(row)
            if not draft:
                record.log(**row)
        if not draft:
            progress.log(row)
        telemetry.barrier()      # rank 0's record write is not anyone's training time
        paused += time.perf_counter() - t_log
        _check_finite(cfg, health, point)
        kept.into(record)        # this point's warnings (--on-nonfinite warn's among them)
        return signal_name(vote)

    def save(point: int) -> str:
        """A checkpoint after local step ``point`` (collective); the clock stops meanwhile."""
        nonlocal paused
        t0 = time.perf_counter()
        driver = {"step": step, "base": base, "train_time": t0 - start - paused,
                  "losses": watch.state_dict(), "first_loss": first_loss}
        meta = {"config": cfg.resolved(), "rows": rows, "algo": cfg.algo} if rank == 0 else {}
        path = checkpoint.save(telemetry, ckpt_dir, point,
                               {"algorithm": algo.state_dict(), "driver": driver}, meta)
        paused += time.perf_counter() - t0
        return path

    def stop(name: str, point: int) -> None:
        path = save(point)
        raise Interrupted(f"interrupted: {name} at step {point}, checkpoint {path}")

    def last_checkpoint(point: int) -> None:
        """With ``--checkpoint-every``, the last step is checkpointed too (Lightning's
        ``save_last``), before ``finish()``: the state and the row a longer run has at
        ``point``, so ``--resume`` with a larger ``--steps`` extends the run."""
        if cfg.checkpoint_every is not None:
            interval = watch.state_dict()
            log_point(point, draft=True)
            save(point)
            watch.load_state_dict(interval)     # the final row reports the interval too

    def checkpoint_due(point: int) -> None:
        """The periodic checkpoint, if one is due at ``point`` (every rank alike)."""
        nonlocal next_checkpoint
        if next_checkpoint is not None and point >= next_checkpoint:
            save(point)
            next_checkpoint = _next_multiple(point, cfg.checkpoint_every)

    if algo.is_worker:
        w = algo.replica_index
        stream = datasets.WorkerStream(data.to(device), shards[w], w, cfg.seed, cfg.batch_size)
        pace = Pace(cfg, algo)
        vote = StopVote(telemetry, signals) if algo.collective_rounds else None
        rounds = algo.rounds
        try:
            while pace.running(step):
                x, y = stream.batch(step)
                opt.zero_grad(set_to_none=False)
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                algo.step(loss)
                step += 1
                watch.add(loss)
                point, last = pace.after_step(step, progress)
                if last:
                    if vote is not None:
                        vote.close()
                    elif cfg.checkpoint_every is not None:
                        algo.rendezvous()     # a centre checkpoints at a rendezvous only
                    last_checkpoint(point)
                    algo.finish()        # draining in-flight messages is training time
                if point is not None:
                    if not last:
                        algo.rendezvous()    # async algorithms: the centre joins the collectives
                    received = log_point(point)
                    if received and not last:
                        stop(received, point)
                    if vote is None and not last:    # a centre: checkpoints at log points
                        checkpoint_due(point)
                if vote is not None and not last:
                    if algo.rounds != rounds:
                        rounds = algo.rounds
                        received = vote.at_round()
                        if received:
                            stop(received, position())
                    checkpoint_due(position())
        except RunStopped:       # every rank alike: complete the vote in flight
            if vote is not None:
                vote.close()
            raise
    else:                        # a dedicated centre: log points come as rendezvous

        def meet() -> None:
            nonlocal step
            point = min(cfg.steps, (step // cfg.log_every + 1) * cfg.log_every)
            progress.update(point - step)
            step = point
            if point == cfg.steps:            # the workers' last step: its checkpoint
                return last_checkpoint(point)
            received = log_point(point)
            if received and point < cfg.steps:
                stop(received, point)
            checkpoint_due(point)

        algo.serve(on_rendezvous=meet)
        progress.update(cfg.steps - step)
        log_point(cfg.steps)
    train_time = time.perf_counter() - start - paused
    progress.close()
    stats = {k: v - base[k] for k, v in algo.stats().items()}
    mine = [train_time - stats["comm_time"], stats["comm_time"], stats["wait_time"],
            stats["staging_time"], stats["steps"], stats["bytes_sent"]]
    ranks = telemetry.gather(mine, root=0)
    where = telemetry.gather((algo.placement.host, str(device), algo.placement.gpu), root=0)
    params = algo.consensus()
    series = algo.series(train_time)     # collective: rank 0 gets every rank's figures
    algo.close()
    if rank != 0:
        return {}
    summary = {**row, "path": cfg.out, "workers": algo.workers, "algo": cfg.algo,
               "group_size": algo.group_size,
               "eval_time": evaluate.seconds, "eval_samples": cfg.eval_samples,
               "mpi_path": algo.comm.device_path(device),
               "kernels": ops.backend(str(params.device.type)), "device": placement.describe(where),
               "nodes": placement.layout([h for h, _, _ in where], setting("MPISGD_CLUSTER") or ""),
               "warning": _stall_warning(rows, first_loss, data.classes),
               "compression": paid(series, cfg.options.get("compress", ""))}
    with record.edit():          # one new version of the record, completed as a whole
        kept.into(record)
        record.attribute("train_samples", len(data.y_train))     # time per epoch (mpisgd project)
        record.attribute("eval_time", evaluate.seconds)
        if summary["mpi_path"]:          # how device tensors reached MPI
            record.attribute("mpi_path", summary["mpi_path"])
        if summary["nodes"]:             # several nodes, or an emulated cluster (mpisgd cluster)
            record.attribute("nodes", summary["nodes"])
        record.series("ranks", "host", [h for h, _, _ in where])
        record.series("ranks", "device", [d for _, d, _ in where])
        for key, values in series.items():
            group, name = key.split("/")
            record.series(group, name, values)
        if summary["warning"]:
            record.warn(summary["warning"])
        if summary["compression"]:
            record.attribute("compression", summary["compression"])
        record.complete({name: [r[i] for r in ranks] for i, name in enumerate(RANK_FIELDS)},
                        params.detach().cpu().float().numpy())
    if not quiet:
        print(summary_line(summary), flush=True)
    return summary


def _stall_warning(rows: list, first_loss: float | None, classes: int) -> str:
    """The summary's and the record's warning for a run whose loss never moved (or '')."""
    losses = [r["train_loss"] for r in rows]
    if first_loss is None or not stalled(losses, first_loss, chance=math.log(classes)):
        return ""
    return (f"the training loss stayed at its starting value ({first_loss:.4f} at step 1, "
            f"{losses[-1]:.4f} at the end; chance is {math.log(classes):.4f}): the run did not "
            "learn (a learning rate too high or too low, or momentum on stale gradients?)")


def _next_multiple(step: int, every: int | None) -> int | None:
    """The first multiple of ``every`` after ``step`` (``None``: no periodic checkpoints)."""
    return None if every is None else (step // every + 1) * every


def _check_finite(cfg, health: list, point: int) -> None:
    """Stop (or warn) when any rank saw a non-finite loss or parameter (``health``: per
    rank, the step of its first non-finite loss, -1 for non-finite parameters, 0: fine)."""
    bad = [(r, int(v)) for r, v in enumerate(health) if v != 0]
    if not bad:
        return
    rank, code = bad[0]
    what = (f"non-finite loss at step {code} on rank {rank}" if code > 0 else
            f"non-finite parameters at step {point} on rank {rank}")
    if cfg.on_nonfinite == "warn":
        warnings.warn(what + " (--on-nonfinite warn: training goes on)")
        return
    raise Diverged(f"failed: {what}")


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


def _log_point(algo, evaluate, step, wall, watch, bytes_before, signals, local_step):
    """One row of /metrics (losses and bytes summed over ranks, rounds the mean per worker,
    the consensus evaluated; ``first_loss``, the workers' mean loss of step 1, at the
    point that follows it) and what every rank must hear: per rank, its health (the
    step of its first non-finite loss, -1 for non-finite parameters, 0: fine) and its
    signal vote (:func:`~mpisgd.app.stops.vote_code`). One Allreduce carries it all,
    the per-rank figures in one-hot slots."""
    loss_sum, seen, bad, first = watch.take(local_step)
    if not bad and not math.isfinite(algo.flat.data.sum(dtype=torch.float64).item()):
        bad = -1     # a NaN or infinity anywhere makes the float64 sum one (it cannot overflow)
    size, me = algo.comm.size, algo.comm.rank
    sums = torch.zeros(5 + 2 * size, dtype=torch.float64)
    sums[:5] = torch.tensor([loss_sum, seen, algo.stats()["bytes_sent"] - bytes_before,
                             algo.rounds, first])
    sums[5 + me], sums[5 + size + me] = bad, vote_code(signals)
    algo.telemetry.allreduce(sums)    # after the algorithm's queued operations, on every rank
    params = algo.consensus()
    test_loss, test_error = evaluate(params, algo.consensus_buffers())
    row = {"step": step, "wall_time": wall, "train_loss": sums[0].item() / max(sums[1].item(), 1),
           "test_loss": test_loss, "test_error": test_error, "rounds": sums[3].item() / algo.replicas,
           "bytes_sent": sums[2].item(), "consensus_distance": algo.consensus_distance()}
    if sums[4].item():       # the workers' mean loss of step 1 (the interval that holds it)
        row["first_loss"] = sums[4].item() / algo.replicas
    return row, sums[5:5 + size].tolist(), max(sums[5 + size:].tolist())


def summary_line(s: dict) -> str:
    """``mpisgd: sync, 4 workers, 300 steps: test error 3.9% ...; record: PATH``."""
    groups = f" of {s['group_size']} ranks" if s.get("group_size", 1) > 1 else ""
    workers = f"{s['workers']} worker{'s' if s['workers'] != 1 else ''}"
    return (f"mpisgd: {s['algo']}, {workers}{groups}, {int(s['step'])} steps: "
            f"test error {100 * s['test_error']:.2f}% (loss {s['test_loss']:.4f}), "
            f"train loss {s['train_loss']:.4f}, {s['wall_time']:.2f} s "
            f"(+ {s['eval_time']:.2f} s evaluating {s['eval_samples']} test samples a log point), "
            f"{int(s['rounds'])} rounds, {_human_bytes(s['bytes_sent'])} sent, "
            f"device: {s['device']}"
            + (f" on {s['nodes']}" if s.get("nodes") else "")
            + (f" (MPI: {s['mpi_path']})" if s.get("mpi_path") else "")
            + f", kernels: {s['kernels']}; record: {s['path']}"
            + (f"; {s['compression']}" if s.get("compression") else "")
            + (f"; warning: {s['warning']}" if s.get("warning") else ""))


def _human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
