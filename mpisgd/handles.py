"""Operations in flight: :class:`Handle` (one nonblocking MPI operation and the memory it
owns), :class:`Handles` (several as one, and what follows them: :meth:`Handle.all`),
:class:`PersistentRequests` (persistent point-to-point requests between fixed peers) and
:class:`Posting` (the order they are handed to MPI).

A :class:`~mpisgd.comm.Comm` makes them; they keep their buffers alive until the
operation completes, post in the order they were created, and wait politely or
spin as the Comm was told (:mod:`mpisgd.mpienv`).
"""
from __future__ import annotations

import collections
import os
import time

import torch

from ._mpi import MPI

#: Every operation not yet completed, by id: a Handle (and the tensors it keeps) dropped in
#: flight with its Comm or algorithm must outlive it, since MPI still reads and writes
#: that memory (a nonblocking collective cannot be freed or cancelled, MPI-3.1 sec. 5.12);
#: it stays here, until the process ends, unless someone waits for it.
_IN_FLIGHT: dict[int, "Handle"] = {}


class Posting:
    """The operations of one communicator created and not yet posted: collectives must
    match on every rank, so they are posted in creation order, each once its device
    data is ready (:mod:`mpisgd.staging`)."""

    def __init__(self):
        self.queue: collections.deque[Handle] = collections.deque()

    def submit(self, handle: "Handle") -> "Handle":
        self.queue.append(handle)
        self.progress()
        return handle

    def progress(self, upto: "Handle | None" = None) -> None:
        """Post queued operations, in order, whose device data is ready; with ``upto``,
        block until that one is posted."""
        while self.queue:
            head = self.queue[0]
            if not head._ready(block=upto is not None):
                return
            self.queue.popleft()
            head._start()
            if head is upto:
                return

    def flush(self) -> None:
        """Post every queued operation (waiting for its device data)."""
        if self.queue:
            self.progress(upto=self.queue[-1])


class Handle:
    """A pending nonblocking operation: its MPI requests and the buffers they use.

    ``test()`` returns whether it completed (without blocking); ``wait()``
    blocks until it has. On completion the staged result, if any, is copied
    back to the tensor and the buffers are released.

    An operation on CUDA memory may be *queued* first: it is posted to MPI
    once its data is ready on the device (see :mod:`mpisgd.staging`), by any
    later ``test()``/``wait()`` on its communicator, always in the order the
    operations were created (collectives must match on every rank).
    """

    def __init__(self, owner, post, keep, finish=None, status=False, gate=()):
        self._owner = owner
        self._post = post          # () -> MPI requests; None once posted
        self._gate = [e for e in gate if e is not None]   # CUDA events the post waits for
        self._requests = None
        self._keep = keep          # tensors/buffers that must outlive the requests
        self._finish = finish      # called once on completion (staging copy-back)
        self.done = False
        # A receive's source, tag and count, filled on completion (``status=True``).
        self.status = MPI.Status() if status else None
        self._statuses = [self.status] if status else None
        _IN_FLIGHT[id(self)] = self

    @property
    def posted(self) -> bool:
        """Whether the operation has been handed to MPI."""
        return self._post is None

    def _ready(self, block: bool) -> bool:
        """Whether the device data is ready to post; ``block``: wait for it. The host then
        waits for the GPU (compute, not communication) and keeps MPI progressing the
        operations already posted meanwhile (an ``Iprobe`` between event queries), so
        that earlier buckets travel while later layers still compute."""
        while self._gate:
            if not self._gate[0].query():
                if not block:
                    return False
                while not self._gate[0].query():
                    self._owner.mpi.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG)
                    os.sched_yield()
            self._gate.pop(0)
        return True

    def _start(self) -> None:
        post, self._post = self._post, None
        t0 = time.perf_counter()
        self._requests = post()
        dt = time.perf_counter() - t0
        self._owner.comm_time += dt
        if not self._requests:          # a blocking MPI call: the time was spent waiting
            self._owner.wait_time += dt

    def _complete(self) -> None:
        self.done = True
        _IN_FLIGHT.pop(id(self), None)
        self._owner.claims.release(self)
        if self._finish is not None:
            self._finish()
        self._keep = self._requests = self._finish = None

    def test(self) -> bool:
        """Progress the operation; ``True`` once it has completed."""
        if self.done:
            return True
        self._owner.progress()          # post what has become ready, this or later ones
        if not self.posted:
            return False
        t0 = time.perf_counter()
        flag = MPI.Request.Testall(self._requests, self._statuses)
        self._owner.comm_time += time.perf_counter() - t0
        if flag:
            self._complete()
        return flag

    def wait(self) -> None:
        """Block until the operation has completed (time counted as wait time)."""
        if self.done:
            return
        # Everything queued goes out before the host blocks: a peer may answer this
        # operation only after one queued behind it (a request, then its reply).
        self._owner.flush()
        self._owner._wait(self._requests, self._statuses)
        self._complete()

    @staticmethod
    def all(*handles, finish=None) -> "Handles":
        """One pending operation made of ``handles`` (each a :class:`Handle` or a
        :class:`Handles`), and ``finish()``, run once by :meth:`Handles.wait` after they
        complete (what a round does with what arrived: mixing, a second exchange)."""
        return Handles(handles, finish)

    def cancel(self) -> bool:
        """Cancel a posted receive that no message matched yet (``MPI_Cancel``, then the
        wait it requires); returns whether it was cancelled. A receive that a message
        has already matched completes normally instead (its result copied back)."""
        if self.done or not self.posted or self.status is None:
            return False
        for r in self._requests:
            r.Cancel()
        MPI.Request.Waitall(self._requests, self._statuses)
        if not self.status.Is_cancelled():
            self._complete()
            return False
        self._finish = None                 # nothing arrived: nothing to copy back
        self._complete()
        return True


class Handles:
    """Several pending operations as one, and what follows them (:meth:`Handle.all`).

    ``test()`` and ``done`` say whether the operations have completed (they drive
    progress and never run ``finish``); ``wait()`` waits for them in order, then runs
    ``finish`` once: a round's pending work ends only in ``wait()``.
    """
    __slots__ = ("handles", "_finish")

    def __init__(self, handles, finish=None):
        self.handles, self._finish = tuple(handles), finish

    @property
    def done(self) -> bool:
        return all(h.done for h in self.handles)

    def test(self) -> bool:
        return all([h.test() for h in self.handles])

    def wait(self) -> None:
        for h in self.handles:
            h.wait()
        finish, self._finish = self._finish, None
        if finish is not None:
            finish()


class PersistentRequests:
    """Persistent point-to-point requests for repeated exchanges between fixed peers.

    Built once (``MPI_Send_init`` of ``send`` to every destination,
    ``MPI_Recv_init`` of row j of ``recv`` from source j); each
    :meth:`start` starts the requests of the peers active in that round
    (``MPI_Startall``), so a time-varying graph that uses a subset of its
    neighbours each round pays for no set-up. With staging the requests are
    bound to pinned host buffers of their own: ``send`` is copied in at each
    start and the received rows are copied out on completion.
    """

    def __init__(self, owner, graph, send: torch.Tensor, recv: torch.Tensor,
                 dests, sources, tag: int = 0):
        if recv.shape[0] != len(sources):
            raise ValueError(f"recv has {recv.shape[0]} rows for {len(sources)} sources")
        self.owner, self.send, self.recv = owner, send, recv
        self.staged = owner._needs_staging(send, "p2p")
        pin = send.is_cuda
        self._send_host = torch.empty_like(send, device="cpu", pin_memory=pin) if self.staged else send
        self._recv_host = torch.zeros_like(recv, device="cpu", pin_memory=pin) if self.staged else recv
        self.nbytes = send.numel() * send.element_size()
        self._sends = [graph.Send_init(owner.spec(self._send_host), d, tag) for d in dests]
        self._recvs = [graph.Recv_init(owner.spec(self._recv_host[j]), s, tag)
                       for j, s in enumerate(sources)]

    def start(self, send_to, recv_from) -> Handle:
        """Start the sends to the destinations flagged in ``send_to`` and the receives from
        the sources flagged in ``recv_from``; the handle completes them."""
        owner = self.owner
        rows = [j for j, on in enumerate(recv_from) if on]
        reads = [owner.claims.claim(self.send, read_only=True)]
        writes = [owner.claims.claim(self.recv[j]) for j in rows]
        ready = owner.boundary.ready(self.send)
        gate = [owner.boundary.to_host(self.send, self._send_host, after=ready)] if self.staged \
            else [ready]
        requests = [self._recvs[j] for j in rows] + [r for r, on in zip(self._sends, send_to) if on]
        owner.bytes_sent += self.nbytes * sum(bool(on) for on in send_to)

        def post():
            if requests:
                MPI.Prequest.Startall(requests)
            return requests

        def done():
            for j in rows:
                owner.boundary.to_device(self._recv_host[j], self.recv[j], after=ready)

        handle = Handle(owner, post, [self], done if self.staged else None, gate=gate)
        owner.claims.own(handle, reads, writes)
        return owner._submit(handle)

    def free(self) -> None:
        """Free the persistent requests (none may be active)."""
        for request in self._sends + self._recvs:
            request.Free()
        self._sends = self._recvs = []
