"""What the recipe features cost a step: AdamW against SGD, accumulation against one big batch,
bf16 autocast against fp32.

    mpiexec -n 2 python benchmarks/bench_recipes.py --model cnn --batch 32 --accumulate 4
    mpiexec -n 2 python benchmarks/bench_recipes.py --model gpt --batch 16

Contenders, measured side by side (interleaved trials, max over ranks), for
``sync`` and ``local`` (``--tau``) on the same model and data:

* ``sgd``: a step of batch B with ``torch.optim.SGD`` (momentum 0.9);
* ``adamw``: the same step with ``torch.optim.AdamW`` (more state, three more
  passes over the parameters per step);
* ``big``: one step of batch A x B (``--accumulate`` A) with SGD;
* ``accumulate``: A micro-batches of B, the first A - 1 backward passes inside
  ``algo.no_sync()`` (:mod:`mpisgd.app.accumulate`), then the step;
* ``bf16`` (with ``--bf16``): the ``sgd`` step with the forward under
  ``torch.autocast`` to bfloat16 (``--precision bf16``); on a CPU without
  native bf16 it is 10-13 times slower, so not measured by default.

Prints seconds per step and the ratios adamw / sgd, accumulate / big (the
same samples and the same communication per step: what the A forward and
backward passes of a smaller batch cost against one of the larger) and
bf16 / fp32; for ``--model gpt`` (windows of its context, random bytes), the
tokens per second per rank of the fp32 SGD step.
"""
import torch
from mpi4py import MPI

import mpisgd
from mpisgd import models, precision
from mpisgd.app.accumulate import gradient
from common import arguments, count, input_shape, interleaved, machine, trials, usage_error

parser = arguments(__doc__)
parser.add_argument("--model", default="cnn",
                    help="the model: linear, mlp, cnn, resnet20 or gpt[:L,W,H,C] (default cnn)")
parser.add_argument("--batch", type=count, default=32, help="micro-batch per rank (default 32)")
parser.add_argument("--accumulate", type=count, default=4, help="micro-batches (default 4)")
parser.add_argument("--bf16", action="store_true", help="also time the step under bf16 autocast")
args = trials(parser)
try:
    models.parse(args.model)
except ValueError as err:
    usage_error(parser, str(err))

comm = MPI.COMM_WORLD
context = models.context(args.model)
shape = (context,) if context else input_shape(args.model)
classes = 256 if context else 10
A, B = args.accumulate, args.batch


class Stream:
    """Fixed random batches of ``size``: the cost of a step, not of a data set."""
    def __init__(self, size):
        self.x = torch.randint(0, 256, (A * B, context)) if context else torch.randn(A * B, *shape)
        self.y = torch.randint(0, classes, (A * B, context) if context else (A * B,))
        self.size = size

    def batch(self, step):
        i = step % (A * B // self.size)
        return self.x[i * self.size:(i + 1) * self.size], self.y[i * self.size:(i + 1) * self.size]


def contender(algo_name, optimizer, big=False, accumulate=1, cast="fp32"):
    torch.manual_seed(0)
    model = models.build(args.model, shape, classes)
    opt = (torch.optim.AdamW(model.parameters(), lr=1e-3) if optimizer == "adamw"
           else torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    algo = mpisgd.build(algo_name, model, opt, comm=comm,
                        **({"tau": args.tau} if algo_name == "local" else {}))
    stream = Stream(A * B if big else B)
    autocast = (lambda: precision.autocast(cast, torch.device("cpu")))

    def run():
        for step in range(args.steps):
            opt.zero_grad(set_to_none=False)
            algo.step(gradient(model, stream, algo, step, accumulate, autocast))
    return run


runs = {}
for name in ("sync", "local"):
    runs[f"{name} sgd"] = contender(name, "sgd")
    runs[f"{name} adamw"] = contender(name, "adamw")
    runs[f"{name} big"] = contender(name, "sgd", big=True)
    runs[f"{name} accumulate"] = contender(name, "sgd", accumulate=A)
    if args.bf16:
        runs[f"{name} bf16"] = contender(name, "sgd", cast="bf16")
times = interleaved(runs, args.trials, comm)
if comm.rank == 0:
    per = {k: v / args.steps for k, v in times.items()}
    print(f"# {machine()}; {comm.size} ranks; {args.model}, batch {B}/rank, accumulate {A}")
    print(f"{'contender':<18} {'s/step':>10}")
    for name, t in per.items():
        print(f"{name:<18} {t:>10.5f}")
    for name in ("sync", "local"):
        print(f"{name}: adamw / sgd {per[f'{name} adamw'] / per[f'{name} sgd']:.2f}, "
              f"accumulate {A} x {B} / one batch of {A * B} "
              f"{per[f'{name} accumulate'] / per[f'{name} big']:.2f}"
              + (f", bf16 / fp32 {per[f'{name} bf16'] / per[f'{name} sgd']:.2f}" if args.bf16 else "")
              + (f"; {B * context / per[f'{name} sgd']:.0f} tokens/s per rank (fp32 sgd)"
                 if context else ""))
