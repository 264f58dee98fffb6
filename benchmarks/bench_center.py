"""The async EASGD centre: exchanges per second and worker wait, against raw MPI.

    mpiexec -n 3 python benchmarks/bench_center.py [--params 1e6] [--exchanges 200] [--trials 4]
    mpiexec -n 2 python benchmarks/bench_center.py

Every worker does nothing but exchange (tau = 1, an optimizer whose step
does nothing, no gradients): the centre's throughput limit. Contenders, one
after the other on the same ranks, the pair repeated and alternated:

* ``raw``: the same protocol in bare mpi4py on numpy buffers of the model's
  size — a worker sends a PULL (empty), receives c, sends e; rank 0 receives
  from any source, replies or adds — with no Python around it but the loop:
  the limit of this MPI on this machine;
* ``dedicated``: ``async-easgd --center dedicated`` (rank 0 only serves);
* ``rank0``: ``async-easgd --center rank0`` (rank 0 also exchanges with its
  own, local centre, and serves between its own steps).

Printed: exchanges (updates of c) per second at the centre, each
contender's ratio to ``raw``, and the mean seconds a worker waits per
exchange (for c to arrive); medians over ``--trials`` trials.
"""
import statistics
import time

import numpy as np
import torch
from mpi4py import MPI

import mpisgd
from common import NoStep, arguments, count, machine, parse, wide_model

parser = arguments(__doc__)
parser.add_argument("--params", type=count, default=1_000_000,
                    help="model size in float32 parameters (default 1e6)")
parser.add_argument("--exchanges", type=count, default=200,
                    help="exchanges per worker per contender and trial (default 200)")
parser.add_argument("--trials", type=count, default=4,
                    help="trials, each running the three contenders (default 4)")
parser.add_argument("params_", nargs="?", type=count, metavar="PARAMS",
                    help="same as --params (the old positional form)")
parser.add_argument("exchanges_", nargs="?", type=count, metavar="EXCHANGES",
                    help="same as --exchanges (the old positional form)")
args = parse(parser)
params = args.params_ or args.params
exchanges = args.exchanges_ or args.exchanges
comm = MPI.COMM_WORLD
torch.set_num_threads(1)
PULL, PUSH, REPLY = 1, 2, 3


def raw() -> tuple[float, float]:
    """The bare-mpi4py protocol; (centre exchanges/s, worker wait s per exchange)."""
    n = sum(p.numel() for p in wide_model(params).parameters())
    c, buf = np.zeros(n, np.float32), np.zeros(n, np.float32)
    comm.Barrier()
    t0 = time.perf_counter()
    wait = 0.0
    if comm.rank == 0:
        status, pushes = MPI.Status(), 0
        while pushes < exchanges * (comm.size - 1):
            comm.Recv(buf, MPI.ANY_SOURCE, MPI.ANY_TAG, status)
            if status.Get_tag() == PULL:
                comm.Send(c, status.Get_source(), REPLY)
            else:
                c += buf
                pushes += 1
    else:
        x, e = np.zeros(n, np.float32), np.zeros(n, np.float32)
        for _ in range(exchanges):
            t1 = time.perf_counter()
            req = comm.Irecv(buf, 0, REPLY)
            comm.Send(e[:0], 0, PULL)
            req.Wait()
            wait += time.perf_counter() - t1
            np.subtract(x, buf, out=e)
            e *= 0.1
            x -= e
            comm.Send(e, 0, PUSH)
    rate = exchanges * (comm.size - 1) / (time.perf_counter() - t0)
    return comm.bcast(rate), comm.reduce(wait / exchanges, op=MPI.SUM)


def ours(center: str) -> tuple[float, float]:
    torch.manual_seed(0)
    model = wide_model(params)
    algo = mpisgd.build("async-easgd", model, NoStep(model.parameters()), comm=comm,
                        center=center, tau=1)
    comm.Barrier()
    t0 = time.perf_counter()
    if not algo.is_worker:
        algo.serve()
    else:
        for _ in range(exchanges):
            algo.step()
        algo.finish()
    elapsed = time.perf_counter() - t0
    updates = algo.server.updates if comm.rank == 0 else 0
    wait = algo.comm.wait_time / exchanges if comm.rank > 0 else 0.0
    return comm.bcast(updates / elapsed if comm.rank == 0 else None), comm.reduce(wait, op=MPI.SUM)


results = {"raw": [], "dedicated": [], "rank0": []}
waits = {k: [] for k in results}
for trial in range(args.trials):
    order = ["raw", "dedicated", "rank0"]
    for name in (order if trial % 2 == 0 else order[::-1]):
        rate, wait = raw() if name == "raw" else ours(name)
        results[name].append(rate)
        waits[name].append(wait)
if comm.rank == 0:
    remote = comm.size - 1
    print(f"# async EASGD centre, {comm.size} ranks, {params / 1e6:g}M float32 parameters, "
          f"{exchanges} exchanges per worker; {machine()}")
    print(f"{'contender':>10} {'workers':>7} {'exch/s':>8} {'ratio':>6} {'wait ms':>8}")
    base = statistics.median(results["raw"])
    for name in results:
        rate = statistics.median(results[name])
        workers = comm.size if name == "rank0" else remote
        print(f"{name:>10} {workers:>7} {rate:8.1f} {rate / base:6.2f} "
              f"{1e3 * statistics.median(waits[name]) / remote:8.3f}")
