"""Workers that are groups of ranks, on an emulated cluster: the two-level step and training.

    mpisgd cluster --nodes 2 --ranks-per-node 2 --nic 1gbit -- \\
        .venv/bin/python benchmarks/bench_groups.py [--params 4e6] [--steps 800]

Groups are the nodes (``--group-size`` = ranks per node). Two parts:

**Step** (``--params`` float32 gradients, the ``wide_model``; the optimizer
step isolated with ``NoStep``; median of ``--trials``, contenders
interleaved): sync's step flat (one Allreduce over every rank) and in two
levels (reduce-scatter in the node, the 1/G blocks across nodes, all-gather
in the node), against the raw ``MPI_Allreduce`` of the same buffer (MPICH's
own choice of algorithm, node-aware where it is) and gloo's ``all_reduce``
(DDP's exchange). Goal: two levels not slower than flat.

**Training** (the MLP on digits, ``mpisgd train``'s defaults, ``--steps``,
one thread per rank): sync (flat) sets the target, its final test error;
then hierarchical local SGD (groups, tau 8 across nodes, sync inside) and
DiLoCo over groups (tau 16, Nesterov outer 0.7 / 0.9), each also flat
(every rank a worker, same tau). For each: seconds to the target as a
ratio to sync's (goal <= 0.4 for the grouped ones), bytes per level, final
error (goal within 0.5 points of sync's), and the test error of flat and
grouped at the same wall-clock time (the shorter run's end).
"""
import os
import shutil
import tempfile

import h5py
import numpy as np
import torch
from mpi4py import MPI

import mpisgd
from mpisgd.app import train
from mpisgd.app.config import from_sources
from mpisgd.device import node_layout
from bench_diloco import reached
from common import NoStep, arguments, count, init_gloo, interleaved, machine, parse, wide_model

DILOCO = {"outer": "nesterov", "outer_lr": 0.7, "outer_momentum": 0.9}


def step_part(comm, params: int, trials: int, group: int) -> None:
    import torch.distributed as dist
    init_gloo(comm)
    algos = {}
    for name, opts in (("flat", {}), ("two levels", {"group_size": group})):
        model = wide_model(params)
        algos[name] = (mpisgd.build("sync", model, NoStep(model.parameters()), comm=comm, **opts),
                       model)
    raw = torch.zeros(algos["flat"][0].flat.data.numel())
    gloo = raw.clone()

    def sync_step(name):
        algo, model = algos[name]
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        return algo.step

    contenders = {
        "MPI_Allreduce": lambda: comm.Allreduce(MPI.IN_PLACE, raw.numpy()),
        "gloo all_reduce": lambda: dist.all_reduce(gloo),
        "sync flat": lambda: sync_step("flat")(),
        "sync two levels": lambda: sync_step("two levels")(),
    }
    times = interleaved(contenders, trials, comm)
    if comm.rank == 0:
        n = raw.numel() * 4
        print(f"# step: {comm.size} ranks in groups of {group}, {n / 1e6:.1f} MB of gradients, "
              f"{trials} trials; {os.environ.get('MPISGD_CLUSTER', 'no emulated network')}")
        print(f"{'contender':<17} {'ms':>8} {'/ MPI':>6} {'/ gloo':>6} {'/ flat':>6}")
        for name, t in times.items():
            print(f"{name:<17} {t * 1e3:8.1f} {t / times['MPI_Allreduce']:6.2f} "
                  f"{t / times['gloo all_reduce']:6.2f} {t / times['sync flat']:6.2f}")
    for algo, _ in algos.values():
        algo.close()
    dist.destroy_process_group()


def metrics(path: str, comm) -> dict:
    """Rank 0's metrics and bytes per level of a finished record, on every rank."""
    comm.Barrier()
    out = None
    if comm.rank == 0:
        with h5py.File(path, "r") as f:
            out = {k: f["metrics"][k][()] for k in f["metrics"]}
            out["compute"] = float(np.mean(f["steps/compute_mean"][()]))
            if "groups" in f:
                out["inside"] = float(np.sum(f["groups/inside_bytes"][()]))
                out["across"] = float(np.sum(f["groups/across_bytes"][()]))
    return comm.bcast(out)


def error_at(m: dict, seconds: float) -> float:
    """The test error of the last log point at or before ``seconds``."""
    i = max(0, int(np.searchsorted(m["wall_time"], seconds, side="right")) - 1)
    return float(m["test_error"][i])


def train_part(comm, steps: int, group: int) -> None:
    where = comm.bcast(tempfile.mkdtemp(prefix="bench-groups-") if comm.rank == 0 else None)
    runs = [("sync", {"algo": "sync"}),
            ("hier-local-8", {"algo": "local", "tau": 8, "group_size": group}),
            ("local-8 flat", {"algo": "local", "tau": 8}),
            ("diloco-16 groups", {"algo": "local", "tau": 16, "group_size": group, **DILOCO}),
            ("diloco-16 flat", {"algo": "local", "tau": 16, **DILOCO})]
    results = {}
    for name, flags in runs:
        path = os.path.join(where, name.replace(" ", "-") + ".h5")
        cfg = from_sources(None, dict(steps=steps, log_every=max(1, steps // 20), out=path,
                                      threads=1, **flags))
        train.run(cfg, comm, quiet=True)
        results[name] = metrics(path, comm)
    if comm.rank == 0:
        sync = results["sync"]
        target = float(sync["test_error"][-1])
        base = reached(sync, target)
        step = float(sync["wall_time"][-1]) / steps
        print(f"# training: MLP on digits, {steps} steps, {comm.size} ranks, groups of {group}; "
              f"target {100 * target:.2f}% (sync's final), sync reaches it in {base[0]:.2f} s; "
              f"sync's step {step * 1e3:.2f} ms, its exchange "
              f"{(step - sync['compute']) / sync['compute']:.2f}x compute")
        print(f"{'run':<17} {'s':>7} {'s/sync':>7} {'MB inside':>10} {'MB across':>10} "
              f"{'end s':>6} {'final err':>9} {'err @ equal time':>17}")
        pairs = {"hier-local-8": "local-8 flat", "diloco-16 groups": "diloco-16 flat"}
        partner = {**pairs, **{v: k for k, v in pairs.items()}}
        for name, m in results.items():
            hit = reached(m, target)
            when = f"{hit[0]:7.2f} {hit[0] / base[0]:7.2f}" if hit else f"{'not reached':>15}"
            inside = f"{m['inside'] / 1e6:10.1f}" if "inside" in m else f"{'':>10}"
            across = f"{m['across'] / 1e6:10.1f}" if "across" in m else \
                f"{m['bytes_sent'][-1] / 1e6:10.1f}"
            equal = ""
            if name in partner:
                other = results[partner[name]]
                t = min(m["wall_time"][-1], other["wall_time"][-1])
                equal = f"{100 * error_at(m, t):7.2f}% @ {t:5.1f} s"
            print(f"{name:<17} {when} {inside} {across} {m['wall_time'][-1]:6.2f} "
                  f"{100 * float(m['test_error'][-1]):8.2f}% {equal:>17}")
        print(f"# {machine()}")
        shutil.rmtree(where, ignore_errors=True)


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--params", type=count, default=4_000_000)
    parser.add_argument("--trials", type=count, default=10)
    parser.add_argument("--steps", type=count, default=800)
    parser.add_argument("--part", choices=("step", "train", "both"), default="both")
    args = parse(parser)
    comm = MPI.COMM_WORLD
    group = node_layout(comm)[1]
    torch.set_num_threads(1)
    if args.part in ("step", "both"):
        step_part(comm, args.params, args.trials, group)
    if args.part in ("train", "both"):
        train_part(comm, args.steps, group)


if __name__ == "__main__":
    main()
