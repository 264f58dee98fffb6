"""K-sync's time per update against its closed form, with the fixed cost per update measured.

    mpiexec -n 4 python benchmarks/bench_ksync.py [--means 0.015,0.05] [--updates 150]

One server (rank 0) and P = N - 1 workers on a 64-parameter least-squares
model (the protocol alone: each worker's own forward/backward is ~0.1 ms),
with X ~ Exp(MEAN) injected per step (``--straggler exp:MEAN``). For
k-sync K = 1, 2 and ps-sync (K = P), side by side in one run, each
``--trials`` times (median):

* ``measured``: the mean interval between the server's updates while every
  worker trains;
* ``closed``: E[X_(K:P)] = MEAN (H_P - H_{P-K}) (REFERENCES.md);
* ``fixed``: the fixed cost per update, measured in the same run from each
  worker's timestamps: the *restart lag* (from an update to the start of the
  next delay on a worker: the reply or the cancellation reaching it, its wake-up from
  the cancelled sleep, its forward/backward) plus the *push latency* (from the
  end of the K-th delay to the update it completes);
* ``realised``: the K-th order statistic of the delays this run actually
  drew (the mean over updates of the K-th delay to run out): what the closed
  form's expectation is estimated by, in one finite sample;
* ``meas/closed``, ``meas/(closed+fixed)`` and ``meas/(realised+fixed)``:
  the last is the model's error with neither the fixed cost nor the sample's
  luck left in it.

Every figure is the mean over ``--trials`` runs with straggler seeds
0, 1, ...: one seed's draws are one fixed sample (seed 0's 150 minima of
three Exp(50 ms) average 19.1 ms, not 16.7), so a single seed's run can sit
15% off the closed form for no fault of the protocol.

The restart lag is paid once per update whatever K is, so it weighs most
where the update is shortest: at K = 1 (MEAN / P) it is a far larger share
than at K = P (MEAN H_P).
"""
import bisect
import statistics
import time

import torch
from mpi4py import MPI

import mpisgd
from common import arguments, count, machine, parse

parser = arguments(__doc__)
parser.add_argument("--means", default="0.015,0.05", help="E[X] in seconds, comma-separated")
parser.add_argument("--updates", type=count, default=150, help="steps per worker (default 150)")
parser.add_argument("--trials", type=count, default=4,
                    help="runs per configuration, straggler seeds 0..TRIALS-1 (default 4)")
args = parse(parser)
comm = MPI.COMM_WORLD
P = comm.size - 1


def harmonic(n: int) -> float:
    return sum(1.0 / i for i in range(1, n + 1))


def run(name: str, k: int | None, mean: float, seed: int) -> tuple[float, float, float, float]:
    """(seconds per update, restart lag, push latency, realised order statistic) of one run."""
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 1, bias=False).double()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    options = {"k": k} if k else {}
    algo = mpisgd.build(name, model, opt, comm=comm, straggler=f"exp:{mean}",
                        straggler_seed=seed, **options)
    starts, ends = [], []
    if algo.is_worker:
        spend = algo.stragglers.spend

        def timed(drawn, interrupted=None):
            t0 = time.perf_counter()
            spent = spend(drawn, interrupted)
            starts.append(t0)
            ends.append((time.perf_counter(), spent < drawn, drawn))
            return spent
        algo.stragglers.spend = timed
        g = torch.Generator().manual_seed(algo.worker_index)
        A, b = torch.randn(32, 64, generator=g, dtype=torch.float64), torch.randn(32, 1, dtype=torch.float64, generator=g)
        for _ in range(args.updates):
            opt.zero_grad()
            ((model(A) - b) ** 2).mean().backward()
            algo.step()
        algo.finish()
        updates = None
    else:
        algo.serve()
        s = algo.server
        updates = [t + s.started for t in s.update_times if t < s.first_done]
    updates = comm.bcast(updates)
    stamps = comm.gather((starts, ends))
    algo.close()
    if comm.rank != 0:
        return 0.0, 0.0, 0.0, 0.0
    u = updates[5:]
    per_update = (u[-1] - u[0]) / (len(u) - 1)
    lags, ran_out = [], {}
    for st, en in stamps[1:]:
        for t0, (t1, cut, drawn) in zip(st, en):
            j = bisect.bisect_right(updates, t0) - 1
            if 5 <= j < len(updates) - 5:
                lags.append(t0 - updates[j])
                if not cut:                # a delay that ran out: it pushes for update j + 1
                    ran_out.setdefault(bisect.bisect_left(updates, t1), []).append((t1, drawn))
    kk, pushes, won = k or P, [], []
    for n, done in ran_out.items():        # the K-th delay to run out completes the update
        if n < len(updates) and len(done) >= kk:
            t1, drawn = sorted(done)[kk - 1]
            pushes.append(updates[n] - t1)
            won.append(drawn)
    return per_update, statistics.mean(lags), statistics.mean(pushes), statistics.mean(won)


if comm.rank == 0:
    print(f"# bench_ksync: 1 server, {P} workers, {args.updates} steps each, {args.trials} trials;"
          f" {machine()}")
    print(f"{'protocol':<12} {'E[X] ms':>7} {'measured':>9} {'closed':>7} {'realised':>8} "
          f"{'fixed':>6} {'(lag+push)':>11} {'meas/closed':>11} {'meas/(closed+fixed)':>19} "
          f"{'meas/(realised+fixed)':>21}")
for mean in (float(m) for m in args.means.split(",")):
    for name, k in (("k-sync", 1), ("k-sync", 2), ("ps-sync", None)):
        kk = k or P
        if kk > P:
            continue
        trials = [run(name, k, mean, seed) for seed in range(args.trials)]
        if comm.rank == 0:
            t, lag, push, real = (statistics.mean(x) for x in zip(*trials))
            closed = mean * (harmonic(P) - harmonic(P - kk))
            fixed = lag + push
            print(f"{name + ' K=' + str(kk):<12} {mean * 1e3:>7.0f} {t * 1e3:>9.2f} {closed * 1e3:>7.2f} "
                  f"{real * 1e3:>8.2f} {fixed * 1e3:>6.2f} {f'{lag * 1e3:.2f}+{push * 1e3:.2f}':>11} "
                  f"{t / closed:>11.3f} {t / (closed + fixed):>19.3f} "
                  f"{t / (real + fixed):>21.3f}", flush=True)
