"""Binding an algorithm to its model, optimizer and communicator: what every rank does, in order.

:func:`bind` runs inside :class:`~mpisgd.algorithms.base.Algorithm`'s constructor
(``algo.opts``, ``size``, ``rank``, ``model`` and ``optimizer`` set), on every rank:

1. the node layout (``MPI_Comm_split_type`` and one small ``allgather``, every rank
   alike) and the group size it gives ``group_size node``;
2. the checks that need ranks, files or a device: the environment, the launch, the
   groups, :meth:`Algorithm.validate`, the injected delays; a rank that fails alone ends
   every rank with its message (:func:`~mpisgd.errors.agree`, one ``allgather``);
3. agreement on a digest of the algorithm, its options, :meth:`Algorithm.agreement`,
   the parameters' shapes and the optimizer's settings;
4. the device and the flat buffer (a failure there is heard by every rank too);
5. the algorithm's :class:`~mpisgd.comm.Comm` (a Dup where it has server ranks), the
   probe of which operations take device buffers, the uncounted telemetry, rank 0's
   parameters and buffers broadcast;
6. with groups, their communicators (:class:`~mpisgd.groups.Groups`), the Comm the
   rounds run on (``peers``) and what they exchange (``x``, this rank's block).

It sets on ``algo``: ``stragglers``, ``group_size``, ``placement``, ``flat``, ``comm``,
``groups``, ``peers``, ``x`` and ``inner`` (and the private ``_node_ranks``, ``_telemetry``,
``_peer_telemetry``).
"""
from __future__ import annotations

import sys
import traceback

from .._mpi import MPI

from .. import device as placement
from .. import groups
from ..comm import Comm, check_reducible
from ..errors import OptionError, agree, digest
from ..flat import ParamBuffer
from ..mpienv import check_environment, check_launch
from ..stragglers import Stragglers
from .gradients import GradientMean

#: Bucket size of the gradient mean inside a group (DDP's 25 MB).
GROUP_BUCKET = 25e6


def bind(algo, comm, device) -> None:
    """Steps 1-6 of the module on ``algo`` over the mpi4py communicator ``comm``; ``device``:
    see :func:`mpisgd.build`. Collective; raises on every rank alike."""
    algo.stragglers = None
    # every rank, unconditionally: the node layout that group_size node needs
    node_rank, node_ranks = placement.node_layout(comm)
    nodes = comm.allgather((node_ranks, algo.rank - node_rank))
    algo._node_ranks = node_ranks
    # G, the ranks per worker (:mod:`mpisgd.groups`; 1: every rank a worker).
    algo.group_size = groups.size_of(algo.opts.get("group_size", 1), node_ranks)
    try:                 # a rank whose files or environment differ must not leave the
        check_environment()      # others waiting
        check_launch(MPI.COMM_WORLD.Get_size())
        if algo.opts.get("group_size") == "node":
            groups.check(algo.size, algo.group_size,
                         [n for n, first in dict.fromkeys(nodes)])
            if any(first % algo.group_size for _, first in nodes):
                raise OptionError("group_size", "node needs each node's ranks consecutive "
                                  "(block placement: mpiexec -ppn, srun -m block)")
        algo.worker_count(algo.size, algo.opts, node_ranks)   # groups that fit the ranks
        algo.validate()
        if device is not None:
            device = placement.parse(device)
            placement.check_available(device)
        if algo.opts["straggler"] or algo.opts["comm_delay"]:
            delays = Stragglers(algo.opts["straggler"], algo.opts["comm_delay"],
                                algo.opts["straggler_seed"] or 0, max(algo.worker_index, 0),
                                shared_comm=algo.collective_rounds)
            delays.check_workers(algo.workers)
            algo.stragglers = delays if algo.is_worker else None
    except ValueError as err:
        agree(comm, err)
    model, optimizer = algo.model, algo.optimizer
    params = list(model.parameters())
    agree(comm, None, digest({
        "algorithm": algo.name, "options": algo.opts, **algo.agreement(),
        "shapes": [list(p.shape) for p in params],
        "trainable": [p.requires_grad for p in params],
        "dtype": sorted({str(p.dtype) for p in params}),
        "device": device or sorted({p.device.type for p in params}),
        "optimizer": [type(optimizer).__name__] + [
            {k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups],
    }))
    # Where this rank runs (``device=``: bound from the node-local rank; else ``None``:
    # the model's device).
    algo.placement = None
    failed = None
    try:         # a device or memory failure on one rank must not leave the others waiting
        if device is not None:
            algo.placement = placement.bind(comm, device)
            placement.move(model, optimizer, algo.placement.device)
        mean_inside = algo.group_size > 1 and algo.opts.get("group_tau", 1) == 1
        algo.flat = ParamBuffer(model, algo.bucket_bytes() or
                                (GROUP_BUCKET if mean_inside else None))
        check_reducible(algo.flat.dtype)
    except Exception as err:        # noqa: BLE001 - every rank hears it, then raises
        if isinstance(err, ValueError):
            failed = err
        else:                       # not a bad option: this rank shows where it came from
            failed = f"{type(err).__name__}: {err}"
            sys.stderr.write("".join(f"[rank {algo.rank}] {line}\n"
                                     for line in traceback.format_exc().splitlines()))
    agree(comm, failed)
    algo.comm = Comm(comm.Dup() if algo.private_comm else comm)
    algo.comm.probe_device_buffers(algo.flat.device)   # which operations take device buffers
    algo._telemetry = algo.comm.sibling()      # uncounted traffic, in the same posting order
    algo.comm.bcast(algo.flat.data, 0)
    if algo.flat.buffers.numel():
        algo.comm.bcast(algo.flat.buffers, 0)
    # The two-level layout (``None``: every rank a worker).
    algo.groups = groups.Groups(comm, algo.group_size, algo.flat.data.numel(),
                                algo.group_first()) if algo.group_size > 1 else None
    for level in algo.groups.comms() if algo.groups is not None else ():
        level.device_ops = algo.comm.device_ops    # the MPI library's, probed above
    grouped = algo.groups is not None and algo.groups.cross is not None
    # The Comm the algorithm's rounds run on: the workers' (across groups, with groups).
    algo.peers = algo.groups.cross if grouped else algo.comm
    algo._peer_telemetry = algo.peers.sibling() if grouped else algo._telemetry
    # What the rounds exchange: the flat parameters (with groups, this rank's block).
    algo.x = algo.groups.shard(algo.flat.data) if grouped else algo.flat.data
    # With groups (``group_tau`` 1), the gradient mean inside the group before every step.
    algo.inner = None
    if mean_inside and algo.groups.group is not None and not algo.own_gradient_mean:
        overlap = algo.flat.device.type != "cuda" or MPI.Query_thread() >= MPI.THREAD_SERIALIZED
        algo.inner = GradientMean(algo.groups.group, algo.flat, overlap)
