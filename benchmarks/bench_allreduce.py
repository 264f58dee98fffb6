"""sync's gradient exchange per step versus a raw mpi4py Allreduce of the same size.

    mpiexec -n 2 python benchmarks/bench_allreduce.py [--trials 21] [--sizes 1e6,1e7]
    mpiexec -n 4 python benchmarks/bench_allreduce.py

Model: four square Linear layers of 1M or 10M float32 parameters in all,
batch 32, one torch thread per rank. Contenders, alternated trial by trial
(medians of the slowest rank):

* ``backward``: forward + backward of a plain copy of the model (no hooks);
* ``raw``: the same + ``comm.Allreduce(MPI.IN_PLACE, buf)`` on one flat
  float32 numpy buffer of the model's size — the limit;
* ``sync``: forward + backward + ``algo.step()`` of mpisgd's sync (default
  25 MB buckets, overlap on) with an optimizer whose step does nothing.

The exchange per step is each contender minus ``backward``; the ratio
sync/raw of those is the figure of merit (goal <= 1.05). ``cold`` is the
worst case: sync's step alone, with overlap off and no backward (the 1/P
scaling then runs on cold memory), against the raw Allreduce alone.
"""
import copy

import numpy as np
import torch
from mpi4py import MPI

import mpisgd
from common import NoStep, arguments, count, counts, interleaved, machine, parse, wide_model

parser = arguments(__doc__)
parser.add_argument("--trials", type=count, default=21,
                    help="timed trials per contender, after 2 warm-up trials (default 21)")
parser.add_argument("--sizes", type=counts, default=[1_000_000, 10_000_000],
                    help="model sizes in parameters, comma-separated (default 1e6,1e7)")
parser.add_argument("trials_", nargs="?", type=count, metavar="TRIALS",
                    help="same as --trials (the old positional form)")
args = parse(parser)
trials = args.trials_ or args.trials
comm = MPI.COMM_WORLD
torch.set_num_threads(1)
if comm.rank == 0:
    print(f"# sync gradient exchange vs raw Allreduce, {comm.size} ranks; {machine()}")
    print(f"{'params':>9} {'buckets':>7} {'bwd ms':>8} {'raw ms':>8} {'sync ms':>8} "
          f"{'ratio':>6} {'cold ratio':>10}")
for n in args.sizes:
    torch.manual_seed(0)
    model = wide_model(n)
    plain = copy.deepcopy(model)
    algo = mpisgd.build("sync", model, NoStep(model.parameters()), comm=comm)
    cold = mpisgd.build("sync", copy.deepcopy(plain), NoStep(plain.parameters()), comm=comm,
                        overlap=False)
    x = torch.randn(32, model[0].in_features)
    raw = np.random.default_rng(comm.rank).standard_normal(algo.flat.numel).astype(np.float32)

    def backward(m):
        m.zero_grad(set_to_none=False)
        m(x).square().mean().backward()

    t = interleaved({
        "backward": lambda: backward(plain),
        "raw": lambda: (backward(plain), comm.Allreduce(MPI.IN_PLACE, raw)),
        "sync": lambda: (backward(model), algo.step()),
        "raw_alone": lambda: comm.Allreduce(MPI.IN_PLACE, raw),
        "cold": cold.step,
    }, trials, comm)
    ex_raw, ex_sync = t["raw"] - t["backward"], t["sync"] - t["backward"]
    if comm.rank == 0:
        print(f"{algo.flat.numel:>9} {len(algo.flat.buckets):>7} {1e3 * t['backward']:>8.2f} "
              f"{1e3 * ex_raw:>8.2f} {1e3 * ex_sync:>8.2f} {ex_sync / ex_raw:>6.3f} "
              f"{t['cold'] / t['raw_alone']:>10.3f}", flush=True)
