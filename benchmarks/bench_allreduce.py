"""sync's gradient exchange per step versus a raw mpi4py Allreduce of the same size.

    mpiexec -n 2 python benchmarks/bench_allreduce.py [--trials N] [--sizes 1e6,1e7]
    mpiexec -n 4 python benchmarks/bench_allreduce.py

Model: four square Linear layers of 1M or 10M float32 parameters in all,
batch 32, one torch thread per rank. Contenders, alternated trial by trial
(medians of the slowest rank):

* ``backward``: forward + backward of a plain copy of the model (no hooks);
* ``raw``: the same + ``comm.Allreduce(MPI.IN_PLACE, buf)`` on one flat
  float32 numpy buffer of the model's size — the limit;
* ``sync``: forward + backward + ``algo.step()`` of mpisgd's sync (default
  25 MB buckets, overlap on) with an optimizer whose step does nothing;
* ``flat``: forward + backward of a copy whose parameters and gradients are
  views of one :class:`~mpisgd.flat.ParamBuffer` (sync's layout, no hooks),
  then ``comm.Allreduce(MPI.IN_PLACE, ...)`` on its gradient buffer: the
  raw sum of the very memory sync exchanges (no 1/P, no Python);
* ``mean``: ``flat`` with the mean's pass first (``grad.mul_(1/P)``, then
  the raw Allreduce): the limit for an average of gradients that autograd
  accumulated in place, which needs one pass over the bucket that a sum
  does not.

The exchange per step is each contender minus ``backward``; the ratio
sync/raw of those is the figure of merit (goal <= 1.05). ``flat ratio`` is
flat/raw: what the layout alone costs against the numpy buffer (its slower
backward counts as exchange here, as it does for sync), so sync/flat is
what sync's own exchange adds; ``mean ratio`` is sync/mean, sync against
the limit for what it computes. ``cold`` is the worst case: sync's step
alone, with overlap off and no backward (the 1/P scaling then runs on cold
memory), against the raw Allreduce alone.
"""
import copy

import numpy as np
import torch
from mpi4py import MPI

import mpisgd
from common import NoStep, arguments, count, counts, interleaved, machine, parse, wide_model
from mpisgd.flat import ParamBuffer

parser = arguments(__doc__)
parser.add_argument("--trials", type=count, default=None,
                    help="timed trials per contender, after 2 warm-up trials (default 101 up "
                         "to 2M parameters, where a trial takes milliseconds and the ratio "
                         "is the noisiest, 21 above)")
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
    print(f"{'params':>9} {'buckets':>7} {'trials':>6} {'bwd ms':>8} {'raw ms':>8} {'sync ms':>8} "
          f"{'ratio':>6} {'flat ratio':>10} {'mean ratio':>10} {'cold ratio':>10}")
for n in args.sizes:
    torch.manual_seed(0)
    model = wide_model(n)
    plain = copy.deepcopy(model)
    algo = mpisgd.build("sync", model, NoStep(model.parameters()), comm=comm)
    cold = mpisgd.build("sync", copy.deepcopy(plain), NoStep(plain.parameters()), comm=comm,
                        overlap=False)
    flat = copy.deepcopy(plain)
    layout = ParamBuffer(flat, None)          # sync's layout, one bucket, no hooks
    x = torch.randn(32, model[0].in_features)
    raw = np.zeros(algo.flat.numel, np.float32)     # zeros: hundreds of sums stay finite
    flat_grad = layout.grad.numpy()
    n_trials = trials or (101 if n <= 2_000_000 else 21)

    def backward(m):
        m.zero_grad(set_to_none=False)
        m(x).square().mean().backward()

    t = interleaved({
        "backward": lambda: backward(plain),
        "raw": lambda: (backward(plain), comm.Allreduce(MPI.IN_PLACE, raw)),
        "sync": lambda: (backward(model), algo.step()),
        "flat": lambda: (backward(flat), comm.Allreduce(MPI.IN_PLACE, flat_grad)),
        "mean": lambda: (backward(flat), layout.grad.mul_(1.0 / comm.size),
                         comm.Allreduce(MPI.IN_PLACE, flat_grad)),
        "raw_alone": lambda: comm.Allreduce(MPI.IN_PLACE, raw),
        "cold": cold.step,
    }, n_trials, comm, settle=True)
    ex_raw, ex_sync = t["raw"] - t["backward"], t["sync"] - t["backward"]
    ex_flat, ex_mean = t["flat"] - t["backward"], t["mean"] - t["backward"]
    if comm.rank == 0:
        print(f"{algo.flat.numel:>9} {len(algo.flat.buckets):>7} {n_trials:>6} "
              f"{1e3 * t['backward']:>8.2f} {1e3 * ex_raw:>8.2f} {1e3 * ex_sync:>8.2f} "
              f"{ex_sync / ex_raw:>6.3f} {ex_flat / ex_raw:>10.3f} {ex_sync / ex_mean:>10.3f} "
              f"{t['cold'] / t['raw_alone']:>10.3f}", flush=True)
