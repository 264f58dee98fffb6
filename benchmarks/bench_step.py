"""A training step of sync and local against compute alone, on the CPU or ranks sharing GPUs.

    mpiexec -n 2 python benchmarks/bench_step.py --device cuda --model resnet20
    mpiexec -n 4 python benchmarks/bench_step.py --device cpu --model mlp --trials 8

Contenders, measured side by side (interleaved trials, max over ranks):

* ``compute``: zero_grad, forward, backward and ``torch.optim.SGD.step`` on
  the same model, device and batch, with no algorithm: the floor;
* ``sync``: the same step through ``mpisgd.build("sync", ..., device=...)``
  (bucketed gradient Allreduce overlapped with backward; on a GPU with an
  MPI that is not CUDA-aware, staged through pinned host buffers on a side
  stream);
* ``local``: ``local`` with ``--tau``, timed over tau steps (one round).

Each trial times ``--steps`` steps (a multiple of tau) and ends with a
device synchronisation, so GPU time is counted where the host truly waits.
Prints seconds per step and the ratios step / compute.
"""
import torch
import torch.nn.functional as F
from mpi4py import MPI

import mpisgd
from mpisgd import device as placement, models, ops
from common import arguments, count, input_shape, interleaved, machine, trials

parser = arguments(__doc__)
parser.add_argument("--device", default="auto", help="auto, cpu, cuda (local rank %% GPUs)")
parser.add_argument("--model", default="resnet20", choices=sorted(models.MODELS),
                    help="the model (default resnet20)")
parser.add_argument("--batch", type=count, default=128, help="per-rank batch (default 128)")
args = trials(parser)

comm = MPI.COMM_WORLD
shape = input_shape(args.model)


def contender(name):
    torch.manual_seed(0)
    model = models.build(args.model, shape, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if name == "compute":
        device = placement.bind(comm, placement.parse(args.device)).device
        model.to(device)
        step = opt.step
    else:
        algo = mpisgd.build(name, model, opt, comm=comm, device=args.device,
                            **({"tau": args.tau} if name == "local" else {}))
        device, step = algo.device, algo.step
    x = torch.randn(args.batch, *shape, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)

    def run():
        for _ in range(args.steps):
            opt.zero_grad(set_to_none=False)
            F.cross_entropy(model(x), y).backward()
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return run, device


runs = {}
for name in ("compute", "sync", "local"):
    runs[name], where = contender(name)
times = interleaved(runs, args.trials, comm)
if comm.rank == 0:
    per = {k: v / args.steps for k, v in times.items()}
    print(f"# {machine()}; {comm.size} ranks on {where.type}"
          + (f" ({torch.cuda.get_device_name(where)})" if where.type == "cuda" else "")
          + f"; {args.model}, batch {args.batch}/rank, kernels: {ops.backend(where)}")
    print(f"{'contender':<10} {'s/step':>10} {'/compute':>9}")
    for name, t in per.items():
        print(f"{name:<10} {t:>10.5f} {t / per['compute']:>9.2f}")
