"""One gossip round, x_i <- sum_j W_k[i, j] x_j, over an MPI dist-graph communicator.

W lives in Python; MPI carries the graph. A :class:`Mixer` builds, once,
a dist-graph communicator from the sparsity of the workers' block of W
(``MPI_Dist_graph_create_adjacent``: node i listens to the sources
{j : W[i, j] != 0 for some round} and sends to the destinations
{j : W[j, i] != 0}), then each round exchanges the flat parameter buffer
with its neighbours and forms the weighted sum in place, in one pass over
memory (``addmv``) when every neighbour takes part. How the bytes move
(``exchange``):

* ``"neighbor"``: one ``MPI_Ineighbor_allgather`` on the graph (static W);
* ``"persistent"``: ``MPI_Send_init``/``MPI_Recv_init`` to and from each
  neighbour, built once; a round starts only the requests of the
  neighbours active in W_k (time-varying graphs: one peer of the
  exponential graph, the drawn matchings of MATCHA);
* ``"allreduce"``: ``MPI_Iallreduce`` of the mean, when W = 11^T/m;
* ``"auto"``: allreduce for 11^T/m, neighbor for another static W,
  persistent for a time-varying one.

``snapshot=True`` exchanges a copy of x taken when the round starts, so x
may change while the bytes move (the overlapped variant of
:class:`mpisgd.algorithms.gossip.Gossip`); the round then adds
sum_j W_k[i, j] s_j - s_i to x.

Example (a ring of every rank, three rounds without gradients)::

    mixer = Mixer(Comm(comm), topology.build("ring", comm.size), x)
    for k in range(3):
        mixer.finish(mixer.start(k))
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from ._mpi import MPI
from .comm import Handle
from .staging import upload
from .topology.spectral import is_averaging


class Plan(NamedTuple):
    """Round k's part of W for one node: W_ii, the sources' weights (a tensor on x's device
    and as floats), which sources take part, and which destinations listen this round."""
    self_weight: float
    weights: torch.Tensor
    row: list
    active: list
    send_to: list


class Exchange:
    """How a :class:`Mixer`'s round moves the bytes: ``start(plan) -> Handle``, then
    ``combine(plan)`` forms the mix in x; made once per mixer."""

    name = ""

    def __init__(self, mixer: "Mixer"):
        self.mixer = mixer

    def start(self, plan: Plan):
        raise NotImplementedError

    def combine(self, plan: Plan) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Free what the exchange made (no round in flight)."""


class NeighborExchange(Exchange):
    """``MPI_Ineighbor_allgather`` of x (or its snapshot) on the graph: a static W."""

    name = "neighbor"

    def start(self, plan: Plan):
        m = self.mixer
        return m.comm.ineighbor_allgather(m.graph, m.send, m.buffer)

    def combine(self, plan: Plan) -> None:
        """x_i <- W_ii x_i + sum_j W_ij x_j (of the snapshot: x_i + (W_ii - 1) s_i + sum_j W_ij s_j)."""
        m, x = self.mixer, self.mixer.x
        if all(plan.active):
            beta = plan.self_weight
            if m.snapshot:
                x.add_(m.send, alpha=beta - 1.0)
                beta = 1.0
            if m.sources:
                x.addmv_(m.recv.t(), plan.weights, beta=beta)
            elif beta != 1.0:
                x.mul_(beta)
            return
        if m.snapshot:
            x.add_(m.send, alpha=plan.self_weight - 1.0)
        else:
            x.mul_(plan.self_weight)
        for j, on in enumerate(plan.active):
            if on:
                x.add_(m.recv[j], alpha=plan.row[j])


class PersistentExchange(NeighborExchange):
    """``MPI_Send_init``/``MPI_Recv_init`` per neighbour, built once; a round starts the
    requests of the neighbours active in W_k (time-varying graphs)."""

    name = "persistent"

    def __init__(self, mixer: "Mixer"):
        super().__init__(mixer)
        self.requests = mixer.comm.persistent(mixer.graph, mixer.send, mixer.recv, mixer.dests,
                                              mixer.sources)

    def start(self, plan: Plan):
        return self.requests.start(plan.send_to, plan.active)

    def close(self) -> None:
        if self.requests is not None:
            self.requests.free()
            self.requests = None


class AllreduceExchange(Exchange):
    """``MPI_Iallreduce`` of the mean, for W = 11^T/m."""

    name = "allreduce"

    def start(self, plan: Plan):
        m = self.mixer
        if not m.snapshot:
            return m.comm.iallreduce(m.x, average=True)
        m.recv[0].copy_(m.send)
        return m.comm.iallreduce(m.recv[0], average=True)

    def combine(self, plan: Plan) -> None:
        m = self.mixer
        if m.snapshot:          # x + (mean of the snapshots - own snapshot)
            m.x.add_(m.recv[0]).sub_(m.send)


EXCHANGES = {cls.name: cls for cls in (NeighborExchange, PersistentExchange, AllreduceExchange)}


class Mixer:
    """Gossip rounds on the workers' block of a topology's W_k.

    Args:
        comm: the algorithm's :class:`~mpisgd.comm.Comm` (bytes and times count there);
            worker i is rank i.
        topology: a :class:`~mpisgd.topology.Topology` whose first ``comm.size`` nodes are
            the workers (later nodes, the auxiliary variables, are the caller's).
        x: this worker's flat parameters.
        exchange: ``"auto"`` or a name in :data:`EXCHANGES`.
        snapshot: exchange a copy of x taken at :meth:`start` (x may change meanwhile).
    """

    def __init__(self, comm, topology, x: torch.Tensor, exchange: str = "auto",
                 snapshot: bool = False):
        m, i = comm.size, comm.rank
        self.comm, self.topology, self.x, self.node = comm, topology, x, i
        support = topology.support()[:m, :m].clone()
        support.fill_diagonal_(False)
        self.sources = [j for j in range(m) if support[i, j]]      # whom node i listens to
        self.dests = [j for j in range(m) if support[j, i]]        # who listens to node i
        static = not topology.time_varying
        averaging = static and topology.n == m and is_averaging(topology.matrix(0)[:m, :m])
        if exchange == "auto":
            exchange = ("allreduce" if averaging and m > 1 else "neighbor" if static
                        else "persistent")
        if exchange == "allreduce" and not averaging:
            raise ValueError("exchange allreduce needs W = 11^T/m over the workers "
                             "(topology complete with uniform weights); use neighbor")
        if exchange == "neighbor" and not static:
            raise ValueError(f"exchange neighbor needs a static W; topology "
                             f"{topology.name} changes every round: use persistent")
        self.snapshot = snapshot
        self.send = x.clone() if snapshot else x
        # One row per source (at least one: MPI refuses a null receive buffer).
        rows = 1 if exchange == "allreduce" else max(1, len(self.sources))
        self.buffer = torch.zeros((rows, x.numel()), dtype=x.dtype, device=x.device)
        self.recv = self.buffer if exchange == "allreduce" else self.buffer[:len(self.sources)]
        self.graph = comm.mpi.Create_dist_graph_adjacent(self.sources, self.dests, reorder=False)
        #: How the bytes move (an :data:`EXCHANGES` strategy).
        self.exchange = EXCHANGES[exchange](self)
        self._plans = {}           # k mod period -> _plan(k), for periodic topologies
        self.bytes_per_round = 0.0

    @property
    def degree(self) -> tuple[int, int]:
        """(in-degree, out-degree) on the communication graph."""
        return len(self.sources), len(self.dests)

    def plan(self, k: int) -> Plan:
        """Round k's :class:`Plan` for this node; computed once per matrix of a cycle."""
        key = k % self.topology.period if self.topology.period else None
        plan = self._plans.get(key) if key is not None else None
        if plan is None:
            W, i = self.topology.matrix(k), self.node
            row = W[i, self.sources]
            plan = Plan(float(W[i, i]), upload(row.to(self.x.dtype), self.x.device), row.tolist(),
                        [bool(w != 0) for w in row], [bool(W[j, i] != 0) for j in self.dests])
            if key is not None:
                self._plans[key] = plan
        return plan

    def start(self, k: int):
        """Post round ``k``'s exchange of x (or of its snapshot); returns its
        :class:`~mpisgd.comm.Handles`, whose ``wait()`` mixes with the round's plan."""
        plan = self.plan(k)
        if self.snapshot:
            self.send.copy_(self.x)
        before = self.comm.bytes_sent
        handle = self.exchange.start(plan)
        self.bytes_per_round = self.comm.bytes_sent - before
        return Handle.all(handle, finish=lambda: self.exchange.combine(plan))

    def finish(self, pending) -> None:
        """Complete the exchange and mix: x_i <- W_ii x_i + sum_j W_ij x_j."""
        pending.wait()

    def close(self) -> None:
        """Free the persistent requests and the graph communicator (no round in flight)."""
        self.exchange.close()
        if self.graph != MPI.COMM_NULL:
            self.graph.Free()

    def mix(self, k: int) -> None:
        """One blocking round ``k``."""
        self.finish(self.start(k))
