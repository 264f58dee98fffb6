"""sync's gradient exchange per step versus a raw mpi4py Allreduce of the same buffer.

    mpiexec -n 2 python benchmarks/bench_allreduce.py
    mpiexec -n 4 python benchmarks/bench_allreduce.py

For 1M and 10M float32 parameters (four Linear layers), times sync's step()
with an optimizer that does nothing and overlap off — so it is exactly the
bucketed Iallreduce of the gradients plus the 1/P scaling — against
``comm.Allreduce(MPI.IN_PLACE, buf)`` on one flat numpy buffer of the same
size. Goal: ratio <= 1.05.
"""
import sys

import numpy as np
import torch
from mpi4py import MPI

import mpisgd
from common import NoStep, interleaved, machine, wide_model

comm = MPI.COMM_WORLD
torch.set_num_threads(1)
trials = int(sys.argv[1]) if len(sys.argv) > 1 else 15
if comm.rank == 0:
    print(f"# sync gradient exchange vs raw Allreduce, {comm.size} ranks; {machine()}")
    print(f"{'params':>8} {'buckets':>7} {'raw ms':>8} {'sync ms':>8} {'ratio':>6}")
for n in (1_000_000, 10_000_000):
    model = wide_model(n)
    algo = mpisgd.build("sync", model, NoStep(model.parameters()), comm=comm, overlap=False)
    algo.flat.grad.normal_()
    raw = np.random.default_rng(comm.rank).standard_normal(algo.flat.numel).astype(np.float32)
    t = interleaved({"raw": lambda: comm.Allreduce(MPI.IN_PLACE, raw), "sync": algo.step},
                    trials, comm)
    if comm.rank == 0:
        print(f"{algo.flat.numel:>8} {len(algo.flat.buckets):>7} {1e3 * t['raw']:>8.2f} "
              f"{1e3 * t['sync']:>8.2f} {t['sync'] / t['raw']:>6.3f}", flush=True)
