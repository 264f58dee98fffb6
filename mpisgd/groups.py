"""Workers that are groups of ranks: sync SGD inside a group, the algorithm across groups.

With group size G the P ranks of a communicator form m = P / G groups of
consecutive ranks: group g holds ranks gG .. gG + G - 1, and a rank's local
index is l = rank mod G. Two communicators follow (:class:`Groups`):

* ``group``: the G ranks of one group (inside a node: NVLink or shared memory);
* ``cross``: the m ranks of local index l, one per group (across the fabric).

Every rank of a group holds the same model. A cross-group exchange of a
flat tensor t of n elements runs in shards: local rank l exchanges only
its block t[lo_l : hi_l] (:func:`bounds`: n split into G near-equal blocks)
with the rank l of every other group, on ``cross``; the group then
all-gathers the blocks, on ``group``. Every rank (every NIC of a node)
carries 1/G of the exchange, as hybrid-sharded data parallelism and
Horovod's hierarchical Allreduce do; what crosses the fabric per rank is
1/G of a flat exchange of the same tensor among m ranks.

Gradients inside a group are averaged every step (or, with ``group_tau``
> 1, parameters every ``group_tau`` steps: hierarchical local SGD), and the
algorithm's rounds run among the m groups (docs/algorithms.md, "Groups").
"""
from __future__ import annotations

import torch

from .comm import Comm
from .errors import OptionError


def parse(value) -> int | str:
    """``group_size``: a positive integer, or ``"node"`` (one group per node)."""
    if str(value) == "node":
        return "node"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError("a positive integer or node") from None
    if not number.is_integer() or number < 1:
        raise ValueError("a positive integer or node")
    return int(number)


def size_of(value, node_ranks: int | None) -> int:
    """The group size ``value`` (:func:`parse`) names: ``node`` is ``node_ranks``, the ranks
    per node (1 when unknown: no communicator yet)."""
    value = parse(value)
    return (node_ranks or 1) if value == "node" else value


def check(ranks: int, group: int, node_sizes=None, what: str = "ranks of the job") -> int:
    """The number of groups of ``group`` ranks among ``ranks`` (``what``: which ranks, for
    the message); :class:`OptionError` naming ``group_size`` when ``group`` does not divide
    ``ranks``, or, for ``node`` groups (``node_sizes``: the ranks of each node, in rank
    order), when nodes differ in size."""
    if node_sizes is not None and len(set(node_sizes)) > 1:
        raise OptionError("group_size", f"node needs the same number of ranks on every node, "
                          f"got {', '.join(map(str, node_sizes))} (give a number instead)")
    if ranks % group:
        raise OptionError("group_size", f"must divide the {ranks} {what} into equal groups, "
                          f"got {group}")
    return ranks // group


def bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` of each of ``parts`` near-equal consecutive blocks of ``range(n)``
    (the first ``n mod parts`` one element longer)."""
    base, extra = divmod(n, parts)
    out, lo = [], 0
    for i in range(parts):
        hi = lo + base + (i < extra)
        out.append((lo, hi))
        lo = hi
    return out


class Groups:
    """The two-level layout of a communicator in groups of ``size`` consecutive ranks.

    Collective over ``comm`` (two ``MPI_Comm_split``). :attr:`group` and
    :attr:`cross` are counted :class:`~mpisgd.comm.Comm` s (their bytes are the
    run's, per level); :meth:`assemble` uses uncounted siblings. Ranks below
    ``first`` (server ranks) are in no group: their ``group`` and ``cross`` are
    ``None``.
    """

    def __init__(self, comm, size: int, n: int, first: int = 0):
        from ._mpi import MPI
        rank = comm.Get_rank()
        #: G, the ranks per group.
        self.size = size
        #: This rank's group (its worker index) and its index inside the group.
        self.index, self.local = divmod(rank - first, size) if rank >= first else (None, None)
        apart = rank < first
        group = comm.Split(MPI.UNDEFINED if apart else self.index, rank)
        cross = comm.Split(MPI.UNDEFINED if apart else self.local, rank)
        self.group = None if apart else Comm(group)
        self.cross = None if apart else Comm(cross)
        self._quiet_group = self.group.sibling() if self.group is not None else None
        #: The blocks of a flat tensor of n elements, one per local index.
        self.blocks = bounds(n, size)
        self.counts = [hi - lo for lo, hi in self.blocks]

    @property
    def count(self) -> int:
        """m, the number of groups."""
        return self.cross.size

    def shard(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's block of the flat tensor ``t`` (a view)."""
        lo, hi = self.blocks[self.local]
        return t[lo:hi]

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every block of ``t`` from its rank in the group, in place (counted); returns ``t``."""
        self.group.iallgatherv(t, self.counts).wait()
        return t

    def assemble(self, block: torch.Tensor) -> torch.Tensor:
        """A new full tensor from each rank's ``block`` (uncounted: telemetry, output)."""
        lo, hi = self.blocks[self.local]
        out = torch.empty(self.blocks[-1][1], dtype=block.dtype, device=block.device)
        out[lo:hi] = block
        self._quiet_group.iallgatherv(out, self.counts).wait()
        return out

    @property
    def leader(self) -> bool:
        """Whether this rank speaks for its group (local index 0)."""
        return self.local == 0

    def comms(self) -> tuple[Comm, ...]:
        """The counted communicators this rank is in (none on a server rank)."""
        return tuple(c for c in (self.group, self.cross) if c is not None)

    def free(self) -> None:
        for c in self.comms():
            c.mpi.Free()
