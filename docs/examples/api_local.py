"""The Python API end to end: local SGD (tau = 4) on the digits, four lines of mpisgd.

    mpiexec -n 4 python docs/examples/api_local.py

``main(algo_name="async-easgd", tau=4)`` runs the same loop around a
dedicated centre rank.

Every rank runs this file. Each worker draws its own batches (seeded by its
worker index); rank 0 prints the consensus model's test error at the end.
``device="auto"`` trains on GPU ``local_rank % GPUs`` where torch sees one
(the model, the optimizer state and the data move there), else on the CPU.
An exception on one rank ends the whole job (``build`` installs mpisgd's
abort hook; ``MPISGD_ABORT=0`` opts out) instead of leaving the other ranks
waiting in a collective.
"""
import torch
import torch.nn.functional as F
from mpi4py import MPI

import mpisgd
from mpisgd import data, models


def main(comm=MPI.COMM_WORLD, steps=200, algo_name="local", **options):
    digits = data.load("digits")
    torch.manual_seed(0)
    model = models.build("mlp", digits.input_shape, digits.classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    algo = mpisgd.build(algo_name, model, opt, comm=comm, device="auto", **(options or {"tau": 4}))
    digits = digits.to(algo.device)     # the small dataset lives on the device: no copy per batch

    if not algo.is_worker:          # a dedicated centre rank (async-easgd, eamsgd, downpour)
        algo.serve()                # returns when every worker has finished
    else:
        # a worker's batches depend only on (seed, worker index, step)
        shards = data.shard(digits.y_train, algo.workers, seed=0)
        w = algo.worker_index
        stream = data.WorkerStream(digits, shards[w], w, seed=0, batch_size=32)
        for step in range(steps):
            x, y = stream.batch(step)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            algo.step()
        algo.finish()
    theta = algo.consensus()        # the same 1-D tensor on every rank

    torch.nn.utils.vector_to_parameters(theta, model.parameters())
    with torch.no_grad():
        error = (model(digits.x_test).argmax(1) != digits.y_test).float().mean().item()
    if comm.rank == 0:
        print(f"{algo_name}: {algo.rounds} rounds, {algo.comm.bytes_sent / 1e6:.1f} MB sent "
              f"by rank 0, test error {100 * error:.2f}%")
    return error, theta


if __name__ == "__main__":
    main()
