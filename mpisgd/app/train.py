"""The training driver behind ``python -m mpisgd train``.

Launch (every rank runs this same code)::

    mpiexec -n 4 python -m mpisgd train --algo local --tau 8 --steps 500

Order of events, on every rank:

1. :func:`~mpisgd.app.prepare.prepare`: the configuration, data, shards and
   model, agreed in one allgather (a problem on any rank ends every rank);
2. bind the algorithm (rank 0's initial parameters are broadcast);
3. train: worker w's batch at step t depends only on (seed, w, t), the rate
   on t (:mod:`~mpisgd.app.lr`); log points, checkpoints and stops
   (:class:`~mpisgd.app.points.Points`), the clock paused (``wall_time`` counts
   training only);
4. ``finish()``, a last log point, per-rank counters, the final model.

Rank 0 shows progress (a bar on a terminal; in a batch log, one line per log
point at most every 10 s) and a one-line summary; other ranks are quiet.
"""
from __future__ import annotations

from functools import partial

import torch

from .. import __version__, data as datasets, device as placement, ops, precision as mixed
from ..errors import ConfigError
from ..mpienv import mpi_library, setting
from ..text import perplexity
from . import lr as lr_schedules, optimizers
from .accumulate import gradient
from .config import TrainConfig
from .logpoint import Evaluator, stall_warning, summary_line
from .pace import Pace, Progress
from .points import Points
from .prepare import prepare, threads_for
from .record import METRICS, RANK_FIELDS, KeptWarnings, RunRecord
from .report import paid
from .stops import RunStopped, Signals, StopVote

__all__ = ["TrainConfig", "prepare", "run", "summary_line"]


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
    torch.set_num_threads(threads_for(comm, cfg.threads))
    opt = optimizers.make(cfg, model.parameters())
    try:
        algo = cfg.spec.bind(model, opt, comm, device=cfg.device)
    except ValueError as err:    # raised on every rank alike, before any message
        raise err if isinstance(err, ConfigError) else ConfigError(str(err)) from None
    if cfg.precision == "fp16":      # before a checkpoint's state: it holds the scaler's
        algo.use_scaler(mixed.Scaler(algo.device))
    rates = lr_schedules.scheduler(opt, cfg, algo, len(data.y_train))   # at the base rate
    meta, state = resume or (None, None)
    if state is not None:
        algo.load_state_dict(state["algorithm"])
    record = None
    if rank == 0:
        rows = {k: [r[k] for r in meta["rows"]] for k in METRICS} if meta else None
        record = RunRecord(cfg.out, cfg.resolved(), size, algo.workers, mpi_library(), __version__,
                           rows=rows)
    try:
        return _train(cfg, comm, algo, model, opt, rates, data, shards, record, quiet, signals,
                      kept, {**state["driver"], "rows": meta["rows"]} if state else None)
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


def _train(cfg, comm, algo, model, opt, rates, data, shards, record, quiet, signals, kept,
           resumed: dict | None) -> dict:
    rank, device = comm.Get_rank(), algo.device
    telemetry = algo.telemetry   # every collective of the driver: uncounted, in the algorithm's order
    evaluate = Evaluator(cfg, data, telemetry, device)
    progress = Progress(cfg.steps, f"{cfg.algo} x{algo.workers}", enabled=(rank == 0 and not quiet))
    at = Points(cfg, algo, record, evaluate, progress, signals, kept, resumed, rates)
    if algo.is_worker:
        w = algo.replica_index
        stream = datasets.WorkerStream(data.to(device), shards[w], w, cfg.seed, cfg.batch_size)
        pace = Pace(cfg, algo)
        vote = StopVote(telemetry, signals) if algo.collective_rounds else None
        rounds = algo.rounds
        cast, scaler = partial(mixed.autocast, cfg.precision, device), algo.scaler
        try:
            while pace.running(at.step):
                opt.zero_grad(set_to_none=False)
                loss = gradient(model, stream, algo, at.step, cfg.accumulate, cast)
                skipped = scaler.skipped if scaler is not None else 0
                algo.step(loss)
                at.stepped(loss, skipped=scaler is not None and scaler.skipped > skipped)
                point, last = pace.after_step(at.step, progress)
                if last:
                    if vote is not None:
                        vote.close()
                    elif cfg.checkpoint_every is not None:
                        algo.rendezvous()     # a centre checkpoints at a rendezvous only
                    at.last_checkpoint(point)
                    algo.finish()        # draining in-flight messages is training time
                if point is not None:
                    if not last:
                        algo.rendezvous()    # async algorithms: the centre joins the collectives
                    received = at.log_point(point)
                    if received and not last:
                        at.stop(received, point)
                    if vote is None and not last:    # a centre: checkpoints at log points
                        at.checkpoint_due(point)
                if vote is not None and not last:
                    if algo.rounds != rounds:
                        rounds = algo.rounds
                        received = vote.at_round()
                        if received:
                            at.stop(received, at.position())
                    at.checkpoint_due(at.position())
        except RunStopped:       # every rank alike: complete the vote in flight
            if vote is not None:
                vote.close()
            raise
    else:                        # a dedicated centre: log points come as rendezvous

        def meet() -> None:
            point = min(cfg.steps, (at.step // cfg.log_every + 1) * cfg.log_every)
            progress.update(point - at.step)
            at.step = point
            if point == cfg.steps:            # the workers' last step: its checkpoint
                return at.last_checkpoint(point)
            received = at.log_point(point)
            if received and point < cfg.steps:
                at.stop(received, point)
            at.checkpoint_due(point)

        algo.serve(on_rendezvous=meet)
        progress.update(cfg.steps - at.step)
        at.log_point(cfg.steps)
    train_time = at.train_time()
    progress.close()
    stats = {k: v - at.base[k] for k, v in algo.stats().items()}
    mine = [train_time - stats["comm_time"], stats["comm_time"], stats["wait_time"],
            stats["staging_time"], stats["steps"], stats["bytes_sent"], stats["skipped_steps"]]
    ranks = telemetry.gather(mine, root=0)
    where = telemetry.gather((algo.placement.host, str(device), algo.placement.gpu), root=0)
    params = algo.consensus()
    series = algo.series(train_time)     # collective: rank 0 gets every rank's figures
    algo.close()
    if rank != 0:
        return {}
    summary = {**at.row, "path": cfg.out, "workers": algo.workers, "algo": cfg.algo,
               "group_size": algo.group_size,
               "eval_time": evaluate.seconds, "eval_samples": cfg.eval_samples,
               "mpi_path": algo.telemetry.device_path(device),
               "kernels": ops.backend(str(params.device.type)), "device": placement.describe(where),
               "nodes": placement.layout([h for h, _, _ in where], setting("MPISGD_CLUSTER") or ""),
               "warning": stall_warning(at.rows, at.first_loss, data.classes),
               "compression": paid(series, cfg.options.get("compress", "")),
               "perplexity": float(perplexity(at.row["test_loss"])) if data.name == "text" else None,
               "skipped_steps": max(r[-1] for r in ranks)}
    with record.edit():          # one new version of the record, completed as a whole
        kept.into(record)
        record.attribute("train_samples", len(data.y_train))     # time per epoch (mpisgd project)
        record.attribute("eval_time", evaluate.seconds)
        if data.name == "text":          # test_loss is in nats per byte: report shows perplexity
            record.attribute("task", "language model")
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


