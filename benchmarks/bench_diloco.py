"""Time and bytes to a target test error when communication costs about twice compute.

    mpiexec -n 4 python benchmarks/bench_diloco.py [--steps 800] [--delay-factor 2]

Training: the default MLP on digits (``mpisgd train``'s defaults: batch 32,
lr 0.05, momentum 0.9), one torch thread per rank, one record per run in a
temporary directory. First a calibration run (local SGD, tau 64, no delay)
measures the compute seconds per step c; every run then gets
``--comm-delay`` = ``--delay-factor`` x c per communication round, so that
sync SGD spends about twice as long communicating as computing, as across
a slow link. On an emulated cluster (``mpisgd cluster --nodes 4 --nic RATE -- python
benchmarks/bench_diloco.py --delay-factor 0``) the link is real: choose RATE so that
the printed exchange of sync is about 2x compute. Runs, in order:

* ``sync``, and sync with each compression (fp16, bf16, int8, topk:0.01,
  powersgd:4) of its gradient buckets;
* ``local-8``, ``local-16``: local SGD, tau 8 and 16;
* ``diloco-16``, ``diloco-64``: local SGD with DiLoCo's outer Nesterov step
  (``--outer nesterov --outer-lr 0.7 --outer-momentum 0.9``), tau 16 and 64;
* ``streaming-64``: DiLoCo tau 64 with 4 fragments, each exchange overlapped
  with 8 steps (``--fragments 4 --fragment-delay 8``), Streaming DiLoCo.

The target is the test error sync SGD reaches at its last log point. For
each run: the first log point at or below the target, its wall-clock
seconds and its bytes (all ranks), as ratios to sync's; peak bytes of one
round; the final test error. Goal: DiLoCo reaches the target with at most
1/tau of sync's bytes and in less time.
"""
import os
import shutil
import tempfile

import h5py
import numpy as np
from mpi4py import MPI

from mpisgd.app import train
from mpisgd.app.config import from_sources
from common import arguments, count, machine, parse

DILOCO = {"outer": "nesterov", "outer_lr": 0.7, "outer_momentum": 0.9}
RUNS = [("sync", {"algo": "sync"})] + \
    [(f"sync-{c}", {"algo": "sync", "compress": c})
     for c in ("fp16", "bf16", "int8", "topk:0.01", "powersgd:4")] + \
    [("local-8", {"algo": "local", "tau": 8}),
     ("local-16", {"algo": "local", "tau": 16}),
     ("diloco-16", {"algo": "local", "tau": 16, **DILOCO}),
     ("diloco-64", {"algo": "local", "tau": 64, **DILOCO}),
     ("streaming-64", {"algo": "local", "tau": 64, "fragments": 4, "fragment_delay": 8,
                       **DILOCO})]


def record(path: str, comm) -> dict:
    """Rank 0's metrics of a finished record, on every rank."""
    comm.Barrier()
    out = None
    if comm.rank == 0:
        with h5py.File(path, "r") as f:
            out = {k: f["metrics"][k][()] for k in f["metrics"]}
            out["round_bytes_max"] = float(np.max(f["streaming"]["round_bytes_max"][()])) \
                if "streaming" in f else None
    return comm.bcast(out)


def reached(m: dict, target: float):
    """(seconds, bytes, step) at the first log point with test error <= target, or None."""
    hit = np.nonzero(m["test_error"] <= target + 1e-12)[0]
    if not len(hit):
        return None
    i = hit[0]
    return float(m["wall_time"][i]), float(m["bytes_sent"][i]), int(m["step"][i])


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--steps", type=count, default=800)
    parser.add_argument("--delay-factor", type=float, default=2.0)
    args = parse(parser)
    comm = MPI.COMM_WORLD
    where = comm.bcast(tempfile.mkdtemp(prefix="bench-diloco-") if comm.rank == 0 else None)
    log_every = max(1, args.steps // 20)

    def run(name, flags, delay):
        path = os.path.join(where, f"{name}.h5")
        cfg = from_sources(None, dict(steps=args.steps, log_every=log_every, out=path, threads=1,
                                      comm_delay=delay, **flags))
        train.run(cfg, comm, quiet=True)
        return record(path, comm)

    calib = run("calibrate", {"algo": "local", "tau": 64}, 0.0)
    compute = float(calib["wall_time"][-1]) / args.steps
    delay = args.delay_factor * compute
    results = {name: run(name, flags, delay) for name, flags in RUNS}
    if comm.rank == 0:
        sync = results["sync"]
        target = float(sync["test_error"][-1])
        base = reached(sync, target)
        print(f"# bench_diloco: {comm.size} ranks, MLP on digits, {args.steps} steps, "
              f"compute {compute * 1e3:.2f} ms/step, --comm-delay {delay * 1e3:.2f} ms/round; "
              f"{machine()}")
        step = float(sync["wall_time"][-1]) / args.steps
        print(f"sync: {step * 1e3:.2f} ms/step, its exchange {(step - compute) / compute:.2f}x "
              "compute" + (f" (on {os.environ['MPISGD_CLUSTER']})"
                           if os.environ.get("MPISGD_CLUSTER") else ""))
        print(f"target test error {100 * target:.2f}% (sync's at step {args.steps}); sync "
              f"reaches it in {base[0]:.2f} s, {base[1] / 1e6:.1f} MB")
        print(f"{'run':<16} {'step':>5} {'s':>7} {'s/sync':>7} {'MB':>8} {'bytes/sync':>10} "
              f"{'peak round kB':>13} {'final err':>9}")
        for name, m in results.items():
            hit = reached(m, target)
            peak = m["round_bytes_max"]
            peak = f"{peak / 1e3:13.1f}" if peak is not None else f"{'':>13}"
            final = f"{100 * float(m['test_error'][-1]):8.2f}%"
            if hit is None:
                print(f"{name:<16} {'-':>5} {'not reached':>36} {peak} {final}")
                continue
            print(f"{name:<16} {hit[2]:5d} {hit[0]:7.2f} {hit[0] / base[0]:7.2f} "
                  f"{hit[1] / 1e6:8.2f} {hit[1] / base[1]:10.4f} {peak} {final}")
        shutil.rmtree(where, ignore_errors=True)


if __name__ == "__main__":
    main()
