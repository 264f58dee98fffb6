"""The parameter server (``async``): updates per second and worker wait, against raw MPI and S.

    mpiexec -n 4 python benchmarks/bench_ps.py [--params 1e6] [--updates 120] [--trials 4]
    mpiexec -n 3 python benchmarks/bench_ps.py

Every worker does nothing but push gradients (zeros, set once; no backward)
and take back the parameters: the servers' throughput limit. ``--params``
(default 1M float32) is the model's size, ``--updates`` (default 120) the
pushes per worker. On N ranks each configuration runs on the first S + P ranks of
COMM_WORLD (a ``Split``), ranks ``0..S-1`` serving, the other P working; the
ranks left out sleep at a barrier. Contenders, every worker count
P = 1 .. N - S:

* ``raw``: the same protocol in bare mpi4py on numpy buffers of the model's
  size, S = 1 — a worker posts the receive of the reply, sends its gradient
  and waits; rank 0 receives from any source, applies ``w -= lr g`` (numpy,
  in place) and sends ``w`` back — with no Python around it but the loop:
  the limit of this MPI on this machine;
* ``async``: ``mpisgd.build("async", ..., servers=S)`` for S = 1, 2, 3 (as
  many as leave one worker), the servers stepping a copy of the worker's
  ``torch.optim.SGD`` on their slices.

Every configuration runs once per trial (``--trials``, default 4), the
order reversed every other trial, after one warm-up trial; each figure is the median over trials, a
ratio the median of the ratios measured in the same trial (on a shared
machine absolute rates drift between trials, ratios hold better).
Printed, per contender, S and P:

* ``upd/s``: updates of the whole parameter vector applied per second
  (P * UPDATES over the slowest rank's time; every server applies each
  gradient to its slice, and the count is checked on every server);
* ``ratio``: ``upd/s`` over ``raw``'s at the same P (raw has S = 1);
* ``wait ms``: seconds a worker is blocked per step (its gradient's send and
  the reply; ``raw``: inside ``Send`` and ``Wait``), the mean over workers;
* ``busy``: the fraction of server 0's time spent serving (the rest it waits
  for a message): near 1, the server is the bottleneck;
* ``speed-up`` of S servers: ``upd/s`` with S over ``upd/s`` with S = 1 at
  the same P, and the scaling ``eff``\\ iciency ``speed-up / S`` (1: each
  server added serves as much as the first; S servers each move 1/S of the
  bytes, so a server-bound run can approach S).

On a machine with fewer cores than ranks the servers share cores with the
workers and with each other (4 ranks on 2 cores: S + P processes on 2
cores), so adding a server adds no compute and the efficiency there is
bounded well below 1: what such a run shows is the cost of the split, not
its scaling.
"""
import statistics
import time

import numpy as np
import torch
from mpi4py import MPI

import mpisgd
from common import arguments, count, idle_barrier, machine, parse, wide_model

parser = arguments(__doc__)
parser.add_argument("--params", type=count, default=1_000_000,
                    help="model size in float32 parameters (default 1e6)")
parser.add_argument("--updates", type=count, default=120,
                    help="pushes per worker per configuration and trial (default 120)")
parser.add_argument("--trials", type=count, default=4,
                    help="timed trials, after one warm-up trial (default 4)")
parser.add_argument("--max-servers", type=count, default=3,
                    help="the most servers tried, S = 1 .. this, leaving one worker (default 3)")
parser.add_argument("params_", nargs="?", type=count, metavar="PARAMS",
                    help="same as --params (the old positional form)")
parser.add_argument("updates_", nargs="?", type=count, metavar="UPDATES",
                    help="same as --updates (the old positional form)")
args = parse(parser)
params = args.params_ or args.params
updates = args.updates_ or args.updates
TRIALS, LR, MAX_SERVERS = args.trials, 0.01, args.max_servers

world = MPI.COMM_WORLD
torch.set_num_threads(1)
GRAD, PARAMS = 1, 2
n = sum(p.numel() for p in wide_model(params).parameters())


def raw(comm) -> tuple[float, float, float]:
    """The bare-mpi4py protocol on ``comm`` (rank 0 serves); (updates/s, worker wait s per
    step, server busy fraction), on rank 0."""
    w, g = np.zeros(n, np.float32), np.zeros(n, np.float32)
    workers = comm.size - 1
    comm.Barrier()
    t0 = time.perf_counter()
    wait = idle = 0.0
    if comm.rank == 0:
        status = MPI.Status()
        for _ in range(updates * workers):
            t1 = time.perf_counter()
            comm.Recv(g, MPI.ANY_SOURCE, GRAD, status)
            idle += time.perf_counter() - t1
            g *= -LR
            w += g
            comm.Send(w, status.Get_source(), PARAMS)
    else:
        for _ in range(updates):
            req = comm.Irecv(w, 0, PARAMS)
            t1 = time.perf_counter()
            comm.Send(g, 0, GRAD)
            req.Wait()
            wait += time.perf_counter() - t1
    elapsed = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
    waits = comm.reduce(wait / updates, op=MPI.SUM)
    if comm.rank == 0:
        return updates * workers / elapsed, waits / workers, 1.0 - idle / elapsed


def ours(comm, servers: int) -> tuple[float, float, float]:
    """``async`` with ``servers`` server ranks on ``comm``; as :func:`raw`."""
    torch.manual_seed(0)
    model = wide_model(params)
    algo = mpisgd.build("async", model, torch.optim.SGD(model.parameters(), lr=LR),
                        comm=comm, servers=servers)
    comm.Barrier()
    t0 = time.perf_counter()
    if not algo.is_worker:
        algo.serve()
        wait, server = None, algo.server
        mine = (server.updates, server.service_time / (server.service_time + server.idle_time))
    else:
        before = algo.comm.wait_time        # the build's broadcast is not a step
        for _ in range(updates):
            algo.step()                     # pushes flat_grad(): the zeros ParamBuffer made
        wait, mine = (algo.comm.wait_time - before) / updates, None
        algo.finish()
    elapsed = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
    waits, served = comm.gather(wait), comm.gather(mine)
    if comm.rank == 0:
        workers = comm.size - servers
        applied = [s[0] for s in served if s is not None]
        if applied != [updates * workers] * servers:
            raise RuntimeError(f"async, servers {servers}, {workers} workers: the servers "
                               f"applied {applied} updates, expected {updates * workers} each")
        return (applied[0] / elapsed, statistics.fmean(w for w in waits if w is not None),
                served[0][1])


def median(trials: list, i: int = 0, over: list | None = None) -> float:
    """The median over trials of figure ``i`` (0: upd/s, 1: wait, 2: busy), or of its ratio
    to ``over``'s upd/s in the same trial."""
    return statistics.median(r[i] / (over[t][0] if over else 1.0) for t, r in enumerate(trials))


# (contender, S, P), grouped by P so that the ratios compare neighbours in time
configs = [(name, s, p) for p in range(1, world.size)
           for name, s in [("raw", 1)] + [("async", s) for s in range(1, MAX_SERVERS + 1)]
           if s + p <= world.size]
subs = {m: world.Split(0 if world.rank < m else MPI.UNDEFINED, world.rank)
        for m in range(2, world.size + 1)}
results = {c: [] for c in configs}
for trial in range(1 + TRIALS):
    for config in (configs if trial % 2 == 0 else configs[::-1]):
        name, s, p = config
        sub = subs[s + p]
        if sub != MPI.COMM_NULL:
            out = raw(sub) if name == "raw" else ours(sub, s)
            if world.rank == 0 and trial > 0:         # trial 0 warms up
                results[config].append(out)
        idle_barrier(world)

if world.rank == 0:
    print(f"# parameter server (async), {world.size} ranks, {n / 1e6:g}M float32 parameters, "
          f"{updates} updates per worker, median of {TRIALS} trials; {machine()}")
    print(f"{'contender':>9} {'S':>2} {'workers':>7} {'upd/s':>8} {'ratio':>6} {'wait ms':>8} "
          f"{'busy':>5} {'speed-up':>8} {'eff':>5}")
    for name, s, p in configs:
        mine = results[name, s, p]
        scaling = "       -     -"
        if name != "raw":
            speedup = median(mine, over=results["async", 1, p])
            scaling = f"{speedup:8.2f} {speedup / s:5.2f}"
        print(f"{name:>9} {s:>2} {p:>7} {median(mine):8.1f} "
              f"{median(mine, over=results['raw', 1, p]):6.2f} {1e3 * median(mine, 1):8.3f} "
              f"{median(mine, 2):5.2f} {scaling}")
