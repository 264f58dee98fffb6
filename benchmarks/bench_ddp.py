"""Step time of mpisgd against the peers a user would pick, on gloo, same processes.

    mpiexec -n 2 python benchmarks/bench_ddp.py [--trials 10] [--models mlp,resnet20]
    mpiexec -n 4 python benchmarks/bench_ddp.py

* ``sync`` (bucketed Iallreduce overlapped with backward) against PyTorch
  DistributedDataParallel on gloo: same model, same per-rank batch, same
  ranks, same torch threads. Goal <= 1.0x, aim 0.9x.
* ``local`` with tau = 8 against torch.distributed's PeriodicModelAverager
  (period 8) on gloo, each timed over 8 steps (one averaging round).

A step is zero_grad, forward, backward, the algorithm's step. Models: a wide
MLP (1.1M parameters, communication-heavy) and ResNet-20 (0.27M,
compute-heavy), on random inputs of CIFAR size.
"""
import argparse
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from mpi4py import MPI
from torch.distributed.algorithms.model_averaging.averagers import PeriodicModelAverager
from torch.nn.parallel import DistributedDataParallel as DDP

import mpisgd
from mpisgd import models
from common import arguments, count, init_gloo, interleaved, machine, parse

MODELS = ("mlp", "resnet20")


def model_list(text: str) -> list[str]:
    names = [m for m in text.split(",") if m]
    if not names or set(names) - set(MODELS):
        raise argparse.ArgumentTypeError(f"expected names from {','.join(MODELS)}, got {text!r}")
    return names


parser = arguments(__doc__)
parser.add_argument("--trials", type=count, default=10,
                    help="timed trials of sync vs DDP, after 2 warm-up trials; local vs the "
                         "averager gets half as many, at least 3 (default 10)")
parser.add_argument("--models", type=model_list, default=list(MODELS),
                    help="comma-separated, from mlp,resnet20 (default both)")
parser.add_argument("--batch", type=count, default=32, help="per-rank batch (default 32)")
parser.add_argument("trials_", nargs="?", type=count, metavar="TRIALS",
                    help="same as --trials (the old positional form)")
args = parse(parser)
trials = args.trials_ or args.trials
BATCH = args.batch

comm = MPI.COMM_WORLD
threads = max(1, len(os.sched_getaffinity(0)) // comm.size)
torch.set_num_threads(threads)
init_gloo(comm)


def make(name):
    torch.manual_seed(0)
    if name == "mlp":
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3072, 320), torch.nn.ReLU(),
                                   torch.nn.Linear(320, 320), torch.nn.ReLU(), torch.nn.Linear(320, 10))
    return models.build("resnet20", (3, 32, 32), 10)


def stepper(model, opt, after):
    g = torch.Generator().manual_seed(comm.rank)
    x = torch.randn(BATCH, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (BATCH,), generator=g)

    def step():
        opt.zero_grad(set_to_none=False)
        F.cross_entropy(model(x), y).backward()
        after()
    return step


def repeat(fn, k):
    def run():
        for _ in range(k):
            fn()
    return run


if comm.rank == 0:
    print(f"# step time, {comm.size} ranks x {threads} torch threads, batch {BATCH}/rank; {machine()}")
    print(f"{'model':>9} {'params':>8} {'comparison':>34} {'peer ms':>8} {'ours ms':>8} {'ratio':>6}")
for name in args.models:
    # sync vs DDP
    ours_model, ddp_model = make(name), make(name)
    ours_opt = torch.optim.SGD(ours_model.parameters(), lr=0.01, momentum=0.9)
    algo = mpisgd.build("sync", ours_model, ours_opt, comm=comm)
    ddp = DDP(ddp_model)
    ddp_opt = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)
    t = interleaved({"peer": stepper(ddp, ddp_opt, ddp_opt.step),
                     "ours": stepper(ours_model, ours_opt, algo.step)}, trials, comm)
    n = algo.flat.numel
    if comm.rank == 0:
        print(f"{name:>9} {n:>8} {'sync vs DDP (gloo)':>34} {1e3 * t['peer']:>8.2f} "
              f"{1e3 * t['ours']:>8.2f} {t['ours'] / t['peer']:>6.3f}", flush=True)
    # local tau=8 vs PeriodicModelAverager
    ours_model, peer_model = make(name), make(name)
    ours_opt = torch.optim.SGD(ours_model.parameters(), lr=0.01, momentum=0.9)
    algo = mpisgd.build("local", ours_model, ours_opt, comm=comm, tau=8)
    peer_opt = torch.optim.SGD(peer_model.parameters(), lr=0.01, momentum=0.9)
    averager = PeriodicModelAverager(period=8, warmup_steps=0)

    def peer_after():
        peer_opt.step()
        averager.average_parameters(peer_model.parameters())
    t = interleaved({"peer": repeat(stepper(peer_model, peer_opt, peer_after), 8),
                     "ours": repeat(stepper(ours_model, ours_opt, algo.step), 8)},
                    max(3, trials // 2), comm)
    if comm.rank == 0:
        print(f"{name:>9} {n:>8} {'local tau=8 vs PeriodicModelAverager':>34} "
              f"{1e3 * t['peer'] / 8:>8.2f} {1e3 * t['ours'] / 8:>8.2f} "
              f"{t['ours'] / t['peer']:>6.3f}", flush=True)
dist.destroy_process_group()
