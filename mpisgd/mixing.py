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

import torch
from ._mpi import MPI
from .staging import upload

EXCHANGES = ("auto", "neighbor", "persistent", "allreduce")


def is_averaging(W: torch.Tensor) -> bool:
    """Whether ``W`` is exact averaging, 11^T/m (to 1e-12)."""
    return bool(torch.allclose(W, torch.full_like(W, 1.0 / W.shape[0]), rtol=0, atol=1e-12))


class Mixer:
    """Gossip rounds on the workers' block of a topology's W_k.

    Args:
        comm: the algorithm's :class:`~mpisgd.comm.Comm` (bytes and times count there);
            worker i is rank i.
        topology: a :class:`~mpisgd.topology.Topology` whose first ``comm.size`` nodes are
            the workers (later nodes, the auxiliary variables, are the caller's).
        x: this worker's flat parameters.
        exchange: one of :data:`EXCHANGES`.
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
        self.exchange = exchange
        self.snapshot = snapshot
        self.send = x.clone() if snapshot else x
        # One row per source (at least one: MPI refuses a null receive buffer).
        rows = 1 if exchange == "allreduce" else max(1, len(self.sources))
        self._buffer = torch.zeros((rows, x.numel()), dtype=x.dtype, device=x.device)
        self.recv = self._buffer if exchange == "allreduce" else self._buffer[:len(self.sources)]
        self.graph = comm.comm.Create_dist_graph_adjacent(self.sources, self.dests, reorder=False)
        self._persistent = (comm.exchange(self.graph, self.send, self.recv, self.dests,
                                          self.sources) if exchange == "persistent" else None)
        self._plans = {}           # k mod period -> _plan(k), for periodic topologies
        self.bytes_per_round = 0.0

    @property
    def degree(self) -> tuple[int, int]:
        """(in-degree, out-degree) on the communication graph."""
        return len(self.sources), len(self.dests)

    def _plan(self, k: int) -> tuple:
        """Round k's part of W for this node: (W_ii, the sources' weights as a tensor and as
        floats, which sources and which destinations take part); once per matrix of a cycle."""
        key = k % self.topology.period if self.topology.period else None
        plan = self._plans.get(key) if key is not None else None
        if plan is None:
            W, i = self.topology.matrix(k), self.node
            row = W[i, self.sources]
            plan = (float(W[i, i]), upload(row.to(self.x.dtype), self.x.device), row.tolist(),
                    [bool(w != 0) for w in row], [bool(W[j, i] != 0) for j in self.dests])
            if key is not None:
                self._plans[key] = plan
        return plan

    def start(self, k: int):
        """Post round ``k``'s exchange of x (or of its snapshot); returns the pending handle."""
        self._self_weight, self._weights, self._row, self._active, send_to = self._plan(k)
        if self.snapshot:
            self.send.copy_(self.x)
        before = self.comm.bytes_sent
        if self.exchange == "allreduce":
            if self.snapshot:
                self.recv[0].copy_(self.send)
                handle = self.comm.iallreduce(self.recv[0], average=True)
            else:
                handle = self.comm.iallreduce(self.x, average=True)
        elif self.exchange == "neighbor":
            handle = self.comm.ineighbor_allgather(self.graph, self.send, self._buffer)
        else:
            handle = self._persistent.start(send_to, self._active)
        self.bytes_per_round = self.comm.bytes_sent - before
        return handle

    def finish(self, handle) -> None:
        """Complete the exchange and mix: x_i <- W_ii x_i + sum_j W_ij x_j (of the snapshot:
        x_i <- x_i + (W_ii - 1) s_i + sum_j W_ij s_j)."""
        handle.wait()
        x = self.x
        if self.exchange == "allreduce":
            if self.snapshot:
                x.add_(self.recv[0]).sub_(self.send)
            return
        if all(self._active):
            beta = self._self_weight - 1.0 if self.snapshot else self._self_weight
            if self.snapshot:
                x.add_(self.send, alpha=beta)
                beta = 1.0
            if self.sources:
                x.addmv_(self.recv.t(), self._weights, beta=beta)
            elif beta != 1.0:
                x.mul_(beta)
            return
        if self.snapshot:
            x.add_(self.send, alpha=self._self_weight - 1.0)
        else:
            x.mul_(self._self_weight)
        for j, on in enumerate(self._active):
            if on:
                x.add_(self.recv[j], alpha=self._row[j])

    def close(self) -> None:
        """Free the persistent requests and the graph communicator (no round in flight)."""
        if self._persistent is not None:
            self._persistent.free()
            self._persistent = None
        if self.graph != MPI.COMM_NULL:
            self.graph.Free()

    def mix(self, k: int) -> None:
        """One blocking round ``k``."""
        self.finish(self.start(k))
