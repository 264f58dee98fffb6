"""Run on every rank of an emulated cluster (tests/launch/test_cluster.py): where each
rank is, and how long an Allreduce of ARGV[1] bytes takes across the nodes. Rank 0
prints one JSON line. ``sleep`` as ARGV[2]: then print 'ready' and wait to be killed.
No torch: four ranks start in a fraction of a second."""
import json
import os
import socket
import sys
import time

import numpy as np
from mpi4py import MPI

from mpisgd import mpienv

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
buf = np.full(int(sys.argv[1]) // 4, rank + 1, dtype=np.float32)
out = np.empty_like(buf)
comm.Allreduce(buf, out)
times = []
for _ in range(3):
    comm.Barrier()
    t0 = time.perf_counter()
    comm.Allreduce(buf, out)
    times.append(time.perf_counter() - t0)
seconds = comm.allreduce(min(times), op=MPI.MAX)
rows = comm.gather({"rank": rank, "host": socket.gethostname(),
                    "processor": MPI.Get_processor_name(), "node_rank": node.Get_rank(),
                    "node_size": node.Get_size(), "launcher_local": mpienv.local_ranks(),
                    "cluster": os.environ.get("MPISGD_CLUSTER"),
                    "sum_ok": bool((out == size * (size + 1) / 2).all())})
if rank == 0:
    print(json.dumps({"ranks": rows, "allreduce_s": seconds}), flush=True)
if sys.argv[2:] == ["sleep"]:
    if rank == 0:
        print("ready", flush=True)
    while True:
        time.sleep(1)
