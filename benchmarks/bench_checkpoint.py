"""The cost of a checkpoint, and the step-time overhead of the non-finite check.

    mpiexec -n 2 python benchmarks/bench_checkpoint.py [--models mlp,resnet20] [--trials 5]

For each model, ``sync`` and ``local`` on the ranks (digits-shaped inputs for
the MLP, CIFAR-shaped for ResNet-20, batch 32 per rank):

* **checkpoint**: seconds of :func:`mpisgd.checkpoint.save` of every rank's
  ``algo.state_dict()`` into a fresh directory (median over ``--trials``,
  slowest rank), the bytes of one rank's file, and the ratio of those
  seconds to the time the filesystem takes for ``torch.save`` of the flat
  parameters alone (the limit: the same bytes, no checkpoint protocol);
* **non-finite check**: a training step (zero_grad, forward, backward,
  ``algo.step``) that hands its loss to the driver's
  :class:`~mpisgd.losses.LossWindow` against the same step summing the loss
  into one scalar as the driver did before, interleaved trial by trial; plus
  the log point's pass over the parameters (a float64 sum) amortised
  over 20 steps. Goal: under 1%.
"""
import os
import shutil
import tempfile
import time

import torch
import torch.nn.functional as F
from mpi4py import MPI

import mpisgd
from mpisgd import checkpoint, models
from mpisgd.losses import LossWindow
from mpisgd.comm import Comm
from common import arguments, count, input_shape, interleaved, machine, parse

parser = arguments(__doc__)
parser.add_argument("--models", default="mlp,resnet20",
                    help="comma-separated models (default mlp,resnet20)")
parser.add_argument("--trials", type=count, default=5,
                    help="checkpoints timed per model and algorithm (default 5)")
parser.add_argument("--steps", type=count, default=20,
                    help="steps per trial of the non-finite check (default 20: a log interval)")
parser.add_argument("--check-trials", type=count, default=101,
                    help="interleaved trials of the non-finite check, at most (default 101; "
                         "fewer where a trial is slow: about 30 s per model and algorithm)")
parser.add_argument("--dir", default=None,
                    help="where checkpoints are written (default: a temporary directory)")
args = parse(parser)
comm = MPI.COMM_WORLD
torch.set_num_threads(1)
root = comm.bcast(args.dir or tempfile.mkdtemp(prefix="mpisgd-bench-") if comm.rank == 0 else None)
telemetry = Comm(comm)
if comm.rank == 0:
    print(f"# checkpoints and the non-finite check, {comm.size} ranks; {machine()}; in {root}")
    print(f"{'model':<9} {'algo':<6} {'params':>8} {'MB/rank':>8} {'ckpt s':>8} {'/save':>6} "
          f"{'step ms':>8} {'check %':>8}")


def median_max(samples):
    worst = [comm.allreduce(s, op=MPI.MAX) for s in samples]
    return sorted(worst)[len(worst) // 2]


for name in args.models.split(","):
    shape = input_shape(name)
    for algo_name, options in (("sync", {}), ("local", {"tau": 4})):
        torch.manual_seed(0)
        model = models.build(name, shape, 10)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        algo = mpisgd.build(algo_name, model, opt, comm=comm, **options)
        x, y = torch.randn(32, *shape), torch.randint(0, 10, (32,))
        for _ in range(2):                      # momentum buffers exist
            opt.zero_grad(set_to_none=False)
            F.cross_entropy(model(x), y).backward()
            algo.step()
        saves, raw = [], []
        for t in range(args.trials):
            where = os.path.join(root, f"{name}-{algo_name}-{t}")
            comm.Barrier()
            t0 = time.perf_counter()
            checkpoint.save(telemetry, where, 1, {"algorithm": algo.state_dict()}, {"trial": t})
            saves.append(time.perf_counter() - t0)
            comm.Barrier()
            t0 = time.perf_counter()
            torch.save(algo.flat.data, os.path.join(where, f"raw-{comm.rank}.pt"))
            raw.append(time.perf_counter() - t0)
        size = os.path.getsize(os.path.join(root, f"{name}-{algo_name}-0", f"step-{1:08d}",
                                            f"rank-{comm.rank:05d}.pt"))
        watch = LossWindow()
        total = torch.zeros((), dtype=torch.float64)

        def steps(check: bool):
            def run():
                for _ in range(args.steps):
                    opt.zero_grad(set_to_none=False)
                    loss = F.cross_entropy(model(x), y)
                    loss.backward()
                    algo.step()
                    if check:
                        watch.add(loss)
                    else:
                        total.add_(loss.detach())
                if check:
                    watch.take(0)
                    algo.flat.data.sum(dtype=torch.float64).item()
                else:
                    total.item()
            return run

        t0 = time.perf_counter()
        steps(False)()
        trial = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
        n = max(5, min(args.check_trials, int(30 / (2 * trial))))     # about 30 s per model
        t = interleaved({"plain": steps(False), "checked": steps(True)}, n, comm)
        ckpt, limit = median_max(saves), median_max(raw)
        if comm.rank == 0:
            print(f"{name:<9} {algo_name:<6} {algo.flat.numel:>8} {size / 1e6:>8.2f} "
                  f"{ckpt:>8.3f} {ckpt / limit:>6.2f} {1e3 * t['plain'] / args.steps:>8.2f} "
                  f"{100 * (t['checked'] / t['plain'] - 1):>+8.2f}", flush=True)
        algo.close()
comm.Barrier()
if comm.rank == 0 and args.dir is None:
    shutil.rmtree(root, ignore_errors=True)
