"""The server protocol: variables held by server ranks, and how workers reach them.

Asynchronous EASGD, EAMSGD and DOWNPOUR keep a centre variable ``c``, and the
parameter-server family (:mod:`mpisgd.server.params`) the parameters ``w``, on
``S`` server ranks: server ``s`` owns the contiguous slice ``s`` of the flat
vector (:class:`Shards`), and a worker exchanges its slices with all servers
at once, with nonblocking point-to-point messages. One message loop
(:class:`Server`) serves both; the kind of a message is its tag:

========== ========= =====================================================
kind       payload   the server
========== ========= =====================================================
PULL       none      replies its slice of ``c`` (tag REPLY)
PUSH       slice     ``c += payload`` (an elastic difference)
PUSH_PULL  slice     ``c += payload``, then replies ``c`` (DOWNPOUR)
GRAD       slice     a gradient computed at version v (parameter server)
SYNC       none      the worker waits at a rendezvous (a log point)
DONE       none      the worker has finished: nothing more comes from it
========== ========= =====================================================

A tag is ``kind + SPAN * (v mod window)``: a gradient carries the version of
the parameters it was computed at, and a server's reply the version it
sends, with no extra message (``window = (MPI_TAG_UB + 1) / SPAN``, at least
2047 versions; the receiver knows the version to within less than that).

Each server keeps exactly one receive posted, from any source with any tag,
and serves each message completely before it posts the next: messages are
served in arrival order, never in lock-step, and those of one worker in the
order it sent them (MPI's non-overtaking rule), so a worker's PUSH is
applied before its next PULL is answered. Every PUSH is applied exactly
once: :class:`~mpisgd.server.center.CenterServer` counts them per worker, and a
worker counts what it sent, and the two agree at the end. A worker sends DONE last
and a server posts no receive once every worker is done, so shutdown
leaves no message unmatched.

A worker posts its REPLY receive before it sends PULL, so the centre's send
of ``c`` always finds it posted; the centre completes that send before it
changes ``c`` again (MPI forbids touching a buffer while it is being sent).
"""
from __future__ import annotations

import time

import torch
from .._mpi import MPI

from ..comm import Comm

PULL, PUSH, PUSH_PULL, GRAD, SYNC, DONE = 1, 2, 3, 4, 5, 6      # worker -> server
REPLY, PARAMS, RESUME, BYE = 8, 9, 10, 11                        # server -> worker
SPAN = 16                 # kinds live in the tag's low bits, versions above
NAMES = {PULL: "pull", PUSH: "push", PUSH_PULL: "push_pull", GRAD: "grad", SYNC: "sync",
         DONE: "done"}


def window(comm: Comm) -> int:
    """Versions a tag tells apart: ``(MPI_TAG_UB + 1) // SPAN`` (MPI guarantees 32767)."""
    return (int(comm.mpi.Get_attr(MPI.TAG_UB)) + 1) // SPAN


def tag(kind: int, version: int, span: int) -> int:
    """The tag of a message of ``kind`` about ``version`` (``span``: :func:`window`)."""
    return kind + SPAN * (version % span)


class Shards:
    """A flat vector of ``n`` elements in ``S`` contiguous slices, slice ``s`` on server rank ``s``.

    Slice ``s`` is ``[floor(s n / S), floor((s+1) n / S))``: sizes differ by one at most.
    """

    def __init__(self, n: int, servers: int):
        if not 1 <= servers:
            raise ValueError(f"servers must be a positive integer, got {servers}")
        self.n, self.servers = n, servers
        self.bounds = [(s * n // servers, (s + 1) * n // servers) for s in range(servers)]

    def slice(self, t: torch.Tensor, s: int) -> torch.Tensor:
        """Server ``s``'s slice of the flat tensor ``t`` (a view)."""
        lo, hi = self.bounds[s]
        return t[lo:hi]

    def slices(self, t: torch.Tensor) -> list[torch.Tensor]:
        return [self.slice(t, s) for s in range(self.servers)]


def restore(obj, name: str, value) -> None:
    """Set ``obj.name`` from a checkpoint: a tensor is copied into the one there (views of
    it stay valid), a dict of tensors likewise, anything else replaces it."""
    current = getattr(obj, name)
    if isinstance(current, torch.Tensor):
        current.copy_(value)
    elif isinstance(current, dict) and current and all(isinstance(v, torch.Tensor)
                                                        for v in current.values()):
        for key, tensor in current.items():
            tensor.copy_(value[key])
    else:
        setattr(obj, name, value)


class Checkpointed:
    """State named by :attr:`checkpointed` (attribute names), saved at a rendezvous (no
    message in flight) and put back with :func:`restore`: servers, clients, the local
    centre."""

    checkpointed: tuple[str, ...] = ()

    def state_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.checkpointed}

    def load_state_dict(self, state: dict) -> None:
        for name in self.checkpointed:
            restore(self, name, state[name])


class Server(Checkpointed):
    """One server rank's message loop: one receive posted, messages served in arrival order.

    Subclasses define :meth:`handle` (PULL, PUSH, PUSH_PULL, GRAD) and may
    react to a worker's SYNC or DONE (:meth:`on_sync`, :meth:`on_done`), and
    to the rendezvous (:meth:`resume`) and the end (:meth:`close`).

    Args:
        comm: the :class:`~mpisgd.comm.Comm` carrying the protocol.
        like: the slice this server holds (messages are at most this long).
        workers: ranks of the remote workers.
        index: worker rank -> worker index, for the per-worker counters.
    """

    kinds = (SYNC, DONE)

    def __init__(self, comm: Comm, like: torch.Tensor, workers: list[int], index: dict[int, int]):
        self.comm = comm
        self.span = window(comm)
        self.remote = set(workers)
        self.index = index
        self.buffer = torch.empty_like(like)
        self.done: set[int] = set()
        self.synced: set[int] = set()
        n = max(index.values(), default=-1) + 1
        self.counts = {NAMES[k]: [0] * n for k in self.kinds}
        self.service_time = 0.0      # seconds spent serving messages
        self.idle_time = 0.0         # seconds blocked waiting for one
        self._recv = None
        self._post()

    checkpointed = ("counts", "service_time", "idle_time")

    def _post(self) -> None:
        if self._recv is None and self.done != self.remote:
            self._recv = self.comm.irecv(self.buffer, MPI.ANY_SOURCE, MPI.ANY_TAG)

    def _serve(self) -> None:
        """Serve the message the posted receive holds, then post the next receive."""
        t0 = time.perf_counter()
        status, self._recv = self._recv.status, None
        source, kind, mod = status.Get_source(), status.Get_tag() % SPAN, status.Get_tag() // SPAN
        if kind not in self.kinds or source not in self.remote or source in self.done:
            raise RuntimeError(f"server: unexpected message (tag {status.Get_tag()}) "
                               f"from rank {source}")
        self.counts[NAMES[kind]][self.index[source]] += 1
        if kind == SYNC:
            self.synced.add(source)
            self.on_sync(source)
        elif kind == DONE:
            self.done.add(source)
            self.on_done(source)
        else:
            self.handle(source, kind, mod)
        self._post()
        if self.buffer.is_cuda:    # the service ends when its replies leave: the update's
            self.comm.flush()      # kernels and staging copies count, not only their launch
        self.service_time += time.perf_counter() - t0

    def handle(self, source: int, kind: int, mod: int) -> None:
        """Serve a message of ``kind`` from ``source``; its payload is in :attr:`buffer`,
        ``mod`` the version it carries modulo :attr:`span`."""
        raise NotImplementedError

    def on_sync(self, source: int) -> None:
        """``source`` now waits at the rendezvous."""

    def on_done(self, source: int) -> None:
        """``source`` has finished."""

    def resume(self) -> None:
        """Every worker has gathered at the rendezvous (before the collectives there)."""

    def close(self) -> None:
        """Every worker is done: complete whatever is left."""

    def poll(self) -> None:
        """Serve every message that has arrived, without blocking."""
        while self._recv is not None and self._recv.test():
            self._serve()

    def serve_until(self, condition) -> None:
        """Serve messages as they arrive until ``condition()`` holds."""
        while not condition():
            if self._recv is None:
                raise RuntimeError("server: every worker is done but the condition never held")
            t0 = time.perf_counter()
            self._recv.wait()
            self.idle_time += time.perf_counter() - t0
            self._serve()

    def gathered(self) -> bool:
        """Whether every remote worker waits at the rendezvous or is done."""
        return self.synced | self.done == self.remote

    def all_done(self) -> bool:
        return self.done == self.remote

    def active(self) -> int:
        """Workers still training: neither done nor at the rendezvous."""
        return len(self.remote - self.done - self.synced)

    def series(self, train_time: float) -> dict:
        """Per-worker message counts and this server's timing, for the run record."""
        return {**self.counts, "service_time": self.service_time, "idle_time": self.idle_time}


class Client(Checkpointed):
    """A worker's side of the protocol: ``S`` servers (ranks ``0..S-1``), sends in flight.

    Sends of one message kind go to every server at once and complete in
    the background; :meth:`settle` waits for them, :meth:`progress` lets
    them along.
    """

    def __init__(self, comm: Comm, shards: Shards):
        self.comm, self.shards = comm, shards
        self.span = window(comm)
        self.servers = range(shards.servers)
        self._sends: list = []
        self._none = torch.empty(0)

    def send(self, kind: int, slices=None, versions=None) -> None:
        """Send ``kind`` to every server: slice ``s`` (or nothing) tagged with ``versions[s]``."""
        self.settle()
        for s in self.servers:
            payload = self._none if slices is None else slices[s]
            v = 0 if versions is None else versions[s]
            self._sends.append(self.comm.isend(payload, s, tag(kind, v, self.span)))

    def settle(self) -> None:
        """Complete the sends in flight (their buffers are free afterwards)."""
        for h in self._sends:
            h.wait()
        self._sends.clear()

    def progress(self) -> None:
        """Let the sends in flight progress (cheap; call between steps)."""
        if self._sends and all(h.test() for h in self._sends):
            self._sends.clear()

    def signal(self, kind: int) -> None:
        """An empty message to every server, sent and completed (nothing stays in flight)."""
        self.send(kind)
        self.settle()
