"""A log point: the consensus evaluated, the row of /metrics, the health and signal votes of
every rank in one Allreduce; and the run's closing words (its summary line, a stall warning)."""
from __future__ import annotations

import math
import time
import warnings

import numpy as np
import torch

from .. import models, streams
from .config import TrainConfig
from .health import stalled
from .stops import Diverged, vote_code


class Evaluator:
    """Test loss and error of the consensus model on ``cfg.eval_samples`` test samples
    (a language model's: per predicted byte, every position of a window).

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
        if self.x.dim() == 2 and not self.x.is_floating_point():    # windows of C tokens:
            self.batch = max(1, self.batch * 64 // self.x.shape[1])     # 64 tokens a sample
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
            sums[0] += models.loss(out, y, reduction="sum")
            sums[1] += (out.argmax(-1) != y).sum()
        sums[2] = self.y.numel()        # samples, or a text's predicted bytes
        sums = self.comm.allreduce(sums.cpu())
        n = max(sums[2].item(), 1.0)
        self.seconds += time.perf_counter() - t0
        return sums[0].item() / n, sums[1].item() / n


def log_row(algo, evaluate, step, wall, watch, bytes_before, signals, local_step):
    """One row of /metrics (losses and bytes summed over ranks, rounds the mean per worker,
    the consensus evaluated; ``first_loss``, the workers' mean loss of step 1, at the
    point that follows it) and what every rank must hear: per rank, its health (the
    step of its first non-finite loss, -1 for non-finite parameters, 0: fine) and its
    signal vote (:func:`~mpisgd.app.stops.vote_code`). One Allreduce carries it all,
    the per-rank figures in one-hot slots."""
    from_start = watch.first_step == 0
    loss_sum, seen, bad, first = watch.take(local_step)
    first = first if from_start else 0.0
    if not bad and not algo.finite():
        bad = -1
    size, me = algo.telemetry.size, algo.telemetry.rank
    sums = torch.zeros(5 + 2 * size, dtype=torch.float64)
    sums[:5] = torch.tensor([loss_sum, seen, algo.stats()["bytes_sent"] - bytes_before,
                             algo.rounds, first])
    sums[5 + me], sums[5 + size + me] = bad, vote_code(signals)
    algo.telemetry.allreduce(sums)    # after the algorithm's queued operations, on every rank
    params = algo.consensus()
    test_loss, test_error = evaluate(params, algo.consensus_buffers())
    row = {"step": step, "wall_time": wall, "train_loss": sums[0].item() / max(sums[1].item(), 1),
           "test_loss": test_loss, "test_error": test_error, "rounds": sums[3].item() / algo.replicas,
           "bytes_sent": sums[2].item(), "consensus_distance": algo.consensus_distance(),
           "lr": algo.optimizer.param_groups[0]["lr"]}
    if sums[4].item():       # the workers' mean loss of step 1 (the interval that holds it)
        row["first_loss"] = sums[4].item() / algo.replicas
    return row, sums[5:5 + size].tolist(), max(sums[5 + size:].tolist())


def check_finite(cfg, health: list, point: int) -> None:
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


def stall_warning(rows: list, first_loss: float | None, classes: int) -> str:
    """The summary's and the record's warning for a run whose loss never moved (or '')."""
    losses = [r["train_loss"] for r in rows]
    if first_loss is None or not stalled(losses, first_loss, chance=math.log(classes)):
        return ""
    return (f"the training loss stayed at its starting value ({first_loss:.4f} at step 1, "
            f"{losses[-1]:.4f} at the end; chance is {math.log(classes):.4f}): the run did not "
            "learn (a learning rate too high or too low, or momentum on stale gradients?)")


def summary_line(s: dict) -> str:
    """``mpisgd: sync, 4 workers, 300 steps: test error 3.9% ...; record: PATH``."""
    groups = f" of {s['group_size']} ranks" if s.get("group_size", 1) > 1 else ""
    workers = f"{s['workers']} worker{'s' if s['workers'] != 1 else ''}"
    result = (f"test perplexity {s['perplexity']:.3f} (loss {s['test_loss']:.4f} nats/byte, "
              f"next-byte error {100 * s['test_error']:.2f}%)" if s.get("perplexity") else
              f"test error {100 * s['test_error']:.2f}% (loss {s['test_loss']:.4f})")
    return (f"mpisgd: {s['algo']}, {workers}{groups}, {int(s['step'])} steps: {result}, "
            f"train loss {s['train_loss']:.4f}, {s['wall_time']:.2f} s "
            f"(+ {s['eval_time']:.2f} s evaluating {s['eval_samples']} test samples a log point), "
            f"{int(s['rounds'])} rounds, {_human_bytes(s['bytes_sent'])} sent, "
            f"device: {s['device']}"
            + (f" on {s['nodes']}" if s.get("nodes") else "")
            + (f" (MPI: {s['mpi_path']})" if s.get("mpi_path") else "")
            + f", kernels: {s['kernels']}; record: {s['path']}"
            + (f"; {s['compression']}" if s.get("compression") else "")
            + (f"; fp16: {int(s['skipped_steps'])} steps skipped (gradients not finite; the most "
               "on one rank)"
               if s.get("skipped_steps") else "")
            + (f"; warning: {s['warning']}" if s.get("warning") else ""))


def _human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
