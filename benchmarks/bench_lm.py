"""Sync against DiLoCo on the gpt model: time and bytes to sync's final test loss.

    make shakespeare
    mpiexec -n 4 python benchmarks/bench_lm.py --text data/shakespeare.txt --steps 480 --tau 16
    mpisgd cluster --nodes 4 --nic 100mbit -- .venv/bin/python benchmarks/bench_lm.py

Two runs of the training driver in this one launch, on the same data, model,
seeds and inner recipe (AdamW, cosine schedule with warmup, weight decay
0.1): ``sync`` (the gradient mean every step) and DiLoCo (``local`` with
``--tau`` inner steps per round and an outer Nesterov step, lr 0.7,
momentum 0.9), which may take more steps (``--diloco-steps``, its schedule
over them). L* is sync's final test loss; for each run the first log point
at or below L* gives its training time and bytes there. Prints both, the
ratios DiLoCo / sync (the goal: bytes <= 1/tau and less time), and each
run's tokens per second per rank. On one machine the exchange is a memory
copy; under ``mpisgd cluster`` it crosses emulated NICs.
"""
import os
import shutil
import sys
import tempfile

import h5py
from mpi4py import MPI

from mpisgd import models
from mpisgd.text import perplexity
from mpisgd.app import train
from mpisgd.app.config import from_sources
from common import arguments, count, machine, parse, usage_error

parser = arguments(__doc__)
parser.add_argument("--text", default="data/shakespeare.txt", help="the text (make shakespeare)")
parser.add_argument("--model", default="gpt", help="the model (default gpt)")
parser.add_argument("--steps", type=count, default=480, help="steps per run (default 480)")
parser.add_argument("--tau", type=count, default=16, help="DiLoCo's inner steps (default 16)")
parser.add_argument("--diloco-steps", type=count, default=None,
                    help="DiLoCo's steps (default twice --steps)")
parser.add_argument("--batch", type=count, default=16, help="windows per rank (default 16)")
parser.add_argument("--lr", type=float, default=3e-3, help="the inner rate (default 3e-3)")
parser.add_argument("--log-every", type=count, default=48,
                    help="steps between log points, a multiple of --tau (default 48: DiLoCo's "
                         "model is its outer one at the end of a round)")
args = parse(parser)
comm = MPI.COMM_WORLD
if not os.path.isfile(args.text):
    usage_error(parser, f"--text {args.text}: no such file (make shakespeare writes it)")
if args.log_every % args.tau:
    usage_error(parser, f"--log-every must be a multiple of --tau ({args.tau})")
try:
    context = models.context(args.model)
except ValueError as err:
    usage_error(parser, str(err))
if context is None:
    usage_error(parser, f"--model {args.model} is not a language model: give gpt[:L,W,H,C]")

RECIPE = dict(model=args.model, data=f"text:{args.text}", optimizer="adamw", lr=args.lr,
              weight_decay=0.1, lr_schedule="cosine", warmup=max(1, args.steps // 20),
              batch_size=args.batch, steps=args.steps, log_every=args.log_every)
CONTENDERS = {"sync": dict(algo="sync"),
              f"diloco tau={args.tau}": dict(algo="local", tau=args.tau, outer="nesterov",
                                             outer_lr=0.7, outer_momentum=0.9,
                                             steps=args.diloco_steps or 2 * args.steps)}
where = comm.bcast(tempfile.mkdtemp(prefix="bench-lm-") if comm.rank == 0 else None)
rows = {}
for name, flags in CONTENDERS.items():
    out = os.path.join(where, name.split()[0] + ".h5")
    train.run(from_sources(None, {"out": out, **RECIPE, **flags}), comm, quiet=True)
    if comm.rank == 0:
        with h5py.File(out, "r") as f:
            rows[name] = {k: f["metrics"][k][()] for k in ("test_loss", "wall_time", "bytes_sent",
                                                           "step")}
comm.Barrier()
if comm.rank:
    sys.exit(0)
shutil.rmtree(where)
window = args.batch * context      # tokens per step and rank
target = rows["sync"]["test_loss"][-1]
print(f"# {machine()}; {comm.size} ranks; {args.model} on {args.text}, {args.steps} steps of "
      f"{args.batch} windows per rank; sync's final test loss L* = {target:.4f} "
      f"(perplexity {perplexity(target):.2f})")
print(f"{'contender':<18} {'steps':>6} {'final loss':>10} {'step to L*':>10} {'s to L*':>9} "
      f"{'MB to L*':>9} {'tokens/s/rank':>14}")
reach = {}
for name, r in rows.items():
    hit = [i for i, loss in enumerate(r["test_loss"]) if loss <= target + 1e-12]
    i = hit[0] if hit else None
    reach[name] = (r["wall_time"][i], r["bytes_sent"][i], r["step"][i]) if i is not None else None
    rate = window * r["step"][-1] / r["wall_time"][-1]
    t, b, k = reach[name] if reach[name] else (float("nan"),) * 3
    print(f"{name:<18} {r['step'][-1]:>6.0f} {r['test_loss'][-1]:>10.4f} {k:>10.0f} {t:>9.2f} "
          f"{b / 1e6:>9.2f} {rate:>14.0f}")
if reach[f"diloco tau={args.tau}"] is None:
    print(f"diloco tau={args.tau} did not reach L* (give it more --diloco-steps)")
else:
    (td, bd, _), (ts, bs, _) = reach[f"diloco tau={args.tau}"], reach["sync"]
    print(f"diloco / sync to L*: time {td / ts:.2f}, bytes {bd / bs:.4f} (1/tau = {1 / args.tau:.4f})")
