"""Tensor communication on one MPI communicator, with byte and time counters: :class:`Comm`.

MPI gets the tensor's own memory (:mod:`mpisgd.buffers`: no copy, no
pickling), on CPU and for CUDA tensors where the MPI takes device buffers in
that operation (:mod:`mpisgd.device_ops`); otherwise CUDA tensors are staged
through pinned host buffers allocated once per tensor (:mod:`mpisgd.staging`;
``staging="always"`` or ``MPISGD_STAGING=always`` stages CPU tensors too, so
that the path is tested without a GPU). Waiting and staging modes, the MPI
library and its CUDA support are probed by :mod:`mpisgd.mpienv`.

Every nonblocking call returns a :class:`Handle` with ``test()``/``wait()``
that keeps its buffers alive until completion; starting another operation on
memory that a pending handle still owns raises ``RuntimeError``.

Byte counters use the volume a bandwidth-optimal algorithm moves per rank:
``2 (P-1)/P * n`` for an Allreduce of ``n`` bytes (ring reduce-scatter plus
allgather), ``(P-1)/P * n`` for a Bcast, ``n`` for a point-to-point send. MPI
does not report which algorithm it picked; these are the figures the
communication-efficient SGD literature compares.
"""
from __future__ import annotations

import copy
import os
import time

import torch
from ._mpi import MPI
from . import buffers, device_ops
from .buffers import REDUCIBLE, Claims, check_reducible, per_block, reduction
from .device_ops import DEVICE_OPS
from .mpienv import cuda_aware, staging_mode, yield_when_waiting
from .handles import _IN_FLIGHT, Handle, Handles, PersistentRequests, Posting
from .staging import DeviceBoundary

__all__ = ["Comm", "Handle", "Handles", "PersistentRequests", "DEVICE_OPS", "REDUCIBLE",
           "check_reducible"]


class Comm:
    """Tensor communication on one MPI communicator, with byte and time counters.

    Construction is collective over ``comm`` (the ranks agree on how to wait).

    Args:
        comm: an mpi4py communicator (default ``MPI.COMM_WORLD``).
        staging: ``"auto"`` (stage CUDA tensors when the MPI is not
            CUDA-aware), ``"always"`` (stage every tensor, CPU too: the
            test of the staging path) or ``"never"``. Default from
            ``MPISGD_STAGING``, else ``"auto"``.

    Example::

        comm = Comm(MPI.COMM_WORLD)
        x = torch.full((4,), float(comm.rank))
        comm.iallreduce(x).wait()        # x == sum of ranks, in place
    """

    def __init__(self, comm=None, staging: str | None = None):
        #: The mpi4py communicator underneath.
        self.mpi = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.mpi.Get_rank()
        self.size = self.mpi.Get_size()
        self.staging = staging_mode(staging)
        self.cuda_aware = cuda_aware()
        #: Operations that get device buffers straight (the others are staged).
        self.device_ops = frozenset(DEVICE_OPS if self.cuda_aware else ())
        # Blocking and nonblocking collectives never match each other, and the
        # choice between them follows yield_wait: every rank must agree on it.
        self.yield_wait = yield_when_waiting()
        if self.size > 1:
            self.yield_wait = bool(self.mpi.allreduce(int(self.yield_wait), op=MPI.MAX))
        self.bytes_sent = 0.0
        self.comm_time = 0.0   # seconds inside MPI calls made through this object
        self.wait_time = 0.0   # of which blocked in wait()
        self.staging_before = 0.0   # staging seconds of an earlier process (a resumed run)
        self.claims = Claims()     # the memory pending operations own (shared by siblings)
        self.boundary = DeviceBoundary()
        self.posting = Posting()   # created, not yet posted (shared by siblings)

    def sibling(self) -> "Comm":
        """A ``Comm`` on the same communicator with counters of its own (uncounted
        telemetry), sharing this one's posting order, memory claims, host buffers and
        side streams. Two ``Comm`` built separately on one communicator would each keep
        their own posting order, which may then differ between ranks: use this."""
        twin = copy.copy(self)
        twin.bytes_sent = twin.comm_time = twin.wait_time = 0.0
        twin.boundary = self.boundary.twin()
        return twin

    # ---- posting order -------------------------------------------------

    def _nothing(self, t: torch.Tensor) -> Handle:
        """A completed handle for an operation on ``t`` that moves nothing (a reduction over
        one rank): pending memory is still refused; no staging copies, no wait for the device."""
        self._claim(t)
        handle = Handle(self, lambda: [], [])
        handle._start()
        handle._complete()
        return handle

    def _submit(self, handle: Handle) -> Handle:
        return self.posting.submit(handle)

    def progress(self, upto: Handle | None = None) -> None:
        """Post queued operations, in creation order, whose device data is ready; with
        ``upto``, block until that one is posted."""
        self.posting.progress(upto)

    def link_delay(self, seconds: float) -> None:
        """Spend an injected link delay (``--comm-delay``): asleep, and counted as
        communication (``comm_time``) and waiting (``wait_time``), as a slow link's
        transfer would be, not as compute."""
        if seconds <= 0:
            return
        t0 = time.perf_counter()
        time.sleep(seconds)
        dt = time.perf_counter() - t0
        self.comm_time += dt
        self.wait_time += dt

    def cancel_receives(self) -> int:
        """Cancel every posted receive on this communicator (any of its siblings') that no
        message has matched: what a run stopped at a rendezvous leaves behind (a
        server's next receive), so that nothing is pending when the communicator is
        freed or MPI finalizes. Returns how many were cancelled."""
        mine = [h for h in list(_IN_FLIGHT.values()) if h._owner.mpi == self.mpi]
        return sum(h.cancel() for h in mine)

    def flush(self) -> None:
        """Post every queued operation (waiting for its device data). Call it before a raw
        mpi4py collective on this communicator, so that every rank posts in the same order."""
        self.posting.flush()

    def probe_device_buffers(self, device) -> frozenset:
        """Start-up test of the operations training hands device buffers to, staging those
        that fail (:func:`mpisgd.device_ops.probe`); collective. Returns :attr:`device_ops`."""
        return device_ops.probe(self, device)

    def device_path(self, device) -> str:
        """How device tensors reach MPI, for the summary line (:func:`mpisgd.device_ops.path`)."""
        return device_ops.path(self, device)

    # ---- buffers -------------------------------------------------------

    def _needs_staging(self, t: torch.Tensor, op: str) -> bool:
        """Whether ``t`` goes to MPI operation ``op`` (:data:`DEVICE_OPS`) through host memory."""
        if self.staging == "always":
            return True
        return t.is_cuda and self.staging == "auto" and op not in self.device_ops

    spec = staticmethod(buffers.spec)

    def _claim(self, t: torch.Tensor, read_only: bool = False) -> tuple[int, int]:
        return self.claims.claim(t, read_only)

    def _start(self, op: str, tensors, post, counted_bytes, blocking=False, status=False,
               read_only=False) -> Handle:
        """Run ``post(*specs) -> requests``, MPI operation ``op`` (:data:`DEVICE_OPS`), on
        MPI views of ``tensors`` (staging if needed).

        ``blocking``: return only once the operation is complete — ``post``
        either is a blocking MPI call (it returns no requests, and its time
        counts as wait time) or its requests are waited here. ``read_only``:
        for all tensors or one per tensor, ``True`` (MPI only reads it: a
        send), ``False`` (reads and writes it) or ``"w"`` (only writes it: a
        receive; a staged one is not copied out first).
        CUDA tensors: see :mod:`mpisgd.staging` (the post waits for their
        data on the device; results reach the compute stream by an event).
        """
        access = list(read_only) if isinstance(read_only, (list, tuple)) else [read_only] * len(tensors)
        spans = [self._claim(t, a is True) for t, a in zip(tensors, access)]
        views, gate, done = self.boundary.route(
            tensors, access, [self._needs_staging(t, op) for t in tensors],
            (lambda: handle.status.Get_count(MPI.BYTE)) if status else None)
        self.bytes_sent += counted_bytes

        # The tensors stay alive too: no new tensor may take a pending one's address (and
        # so its host buffer) until the operation has completed.
        handle = Handle(self, lambda: post(*[self.spec(v) for v in views]), views + list(tensors),
                        done, status, gate)
        self.claims.own(handle, [sp for sp, a in zip(spans, access) if a is True],
                        [sp for sp, a in zip(spans, access) if a is not True])
        self._submit(handle)
        if blocking:
            handle.wait()
        return handle

    # ---- operations ----------------------------------------------------

    def iallreduce(self, t: torch.Tensor, average: bool = False, blocking: bool = False,
                   op=None) -> Handle:
        """Nonblocking in-place Allreduce: the sum (or ``op``), or with ``average=True`` the mean.

        The mean pre-divides ``t`` by the size before summing (as DDP does):
        one pass over memory that the caller usually has just written.
        ``blocking=True`` returns a completed handle: through the blocking
        ``MPI_Allreduce`` (often a faster algorithm), or, when waits yield
        (:func:`mpisgd.mpienv.yield_when_waiting`), an ``MPI_Iallreduce`` waited politely.
        """
        op = reduction(op, average)
        if self.size == 1:
            return self._nothing(t)
        if average:
            self._claim(t)                 # refuse pending memory before touching it
            t.mul_(1.0 / self.size)
        if blocking and not self.yield_wait:
            name, post = "Allreduce", lambda s: self.mpi.Allreduce(MPI.IN_PLACE, s, op=op) or []
        else:
            name, post = "Iallreduce", lambda s: [self.mpi.Iallreduce(MPI.IN_PLACE, s, op=op)]
        return self._start(name, [t], post, self._allreduce_bytes(t), blocking)

    def _allreduce_bytes(self, t: torch.Tensor) -> float:
        """What an Allreduce of ``t`` counts: 2 (P-1)/P of its bytes (module docstring)."""
        return 2.0 * (self.size - 1) / self.size * t.numel() * t.element_size()

    def allreduce(self, t: torch.Tensor, average: bool = False, op=None) -> torch.Tensor:
        """Blocking in-place Allreduce (sum, ``op``, or mean); returns ``t``.

        A host tensor that needs no staging goes straight to MPI, with no
        :class:`Handle` (its Python bookkeeping is a measurable share of a
        1M-element exchange): ``MPI_Allreduce``, often a faster algorithm than
        the nonblocking one, or, when waits yield, an ``MPI_Iallreduce``
        waited politely. Operations queued before it are posted first, and
        memory a pending operation owns is refused, as everywhere.
        """
        if t.is_cuda or self._needs_staging(t, "Allreduce"):
            self.iallreduce(t, average, blocking=True, op=op)
            return t
        op = reduction(op, average)
        self._claim(t)
        if self.size == 1:
            return t
        self.flush()                       # every rank posts in the same order
        if average:
            t.mul_(1.0 / self.size)
        self.bytes_sent += self._allreduce_bytes(t)
        if self.yield_wait:
            t0 = time.perf_counter()
            request = self.mpi.Iallreduce(MPI.IN_PLACE, self.spec(t), op=op)
            self.comm_time += time.perf_counter() - t0
            self._wait([request])
        else:
            t0 = time.perf_counter()
            self.mpi.Allreduce(MPI.IN_PLACE, self.spec(t), op=op)
            dt = time.perf_counter() - t0
            self.comm_time += dt
            self.wait_time += dt
        return t

    def bcast(self, t: torch.Tensor, root: int = 0) -> torch.Tensor:
        """Blocking in-place broadcast of ``t`` from ``root``; returns ``t``."""
        if self.size > 1:
            nbytes = t.numel() * t.element_size()
            self._start("Ibcast", [t], lambda s: [self.mpi.Ibcast(s, root=root)],
                        (self.size - 1) / self.size * nbytes, blocking=True)
        return t

    def isend(self, t: torch.Tensor, dest: int, tag: int = 0) -> Handle:
        """Nonblocking send of ``t``; the tensor must not change until the handle completes."""
        nbytes = t.numel() * t.element_size()
        return self._start("p2p", [t], lambda s: [self.mpi.Isend(s, dest, tag)], nbytes,
                           read_only=True)

    def irecv(self, t: torch.Tensor, source: int | None = None, tag: int | None = None) -> Handle:
        """Nonblocking receive into ``t`` (a message may be shorter than ``t``), from
        ``source`` with ``tag`` (``None``: ``MPI.ANY_SOURCE``, ``MPI.ANY_TAG``).

        On completion ``handle.status`` tells the source, the tag and the
        length (``status.Get_count(MPI.BYTE)``).
        """
        source = MPI.ANY_SOURCE if source is None else source
        tag = MPI.ANY_TAG if tag is None else tag
        return self._start("p2p", [t], lambda s: [self.mpi.Irecv(s, source, tag)], 0.0,
                           status=True,
                           read_only="w")

    def ireduce(self, t: torch.Tensor, root: int = 0) -> Handle:
        """Nonblocking in-place sum of ``t`` over ranks into ``t`` on ``root``.

        On other ranks ``t`` is only read (and must not change until the
        handle completes). Counted as ``(P-1)/P * n`` bytes per rank.
        """
        if self.size == 1:
            return self._nothing(t)
        nbytes = t.numel() * t.element_size()
        me = self.rank == root
        post = lambda s: [self.mpi.Ireduce(MPI.IN_PLACE if me else s, s if me else None,  # noqa: E731
                                            op=MPI.SUM, root=root)]
        return self._start("Ireduce", [t], post, (self.size - 1) / self.size * nbytes)

    def iallgather(self, send: torch.Tensor, recv: torch.Tensor) -> Handle:
        """Nonblocking Allgather: row r of ``recv`` (size x len(send)) gets rank r's ``send``."""
        nbytes = send.numel() * send.element_size()
        return self._start("Iallgather", [send, recv],
                           lambda s, r: [self.mpi.Iallgather(s, per_block(r, s))],
                           (self.size - 1) * nbytes, read_only=(True, "w"))

    def iallgatherv(self, t: torch.Tensor, counts) -> Handle:
        """Nonblocking in-place Allgatherv: ``t`` is ``len(counts)`` consecutive blocks, block r
        (``counts[r]`` elements) rank r's; every rank ends with all of them. Counted as
        ``(P-1)`` times this rank's block (each block goes to every other rank)."""
        if self.size == 1:
            return self._nothing(t)
        displs = [0]
        for c in counts[:-1]:
            displs.append(displs[-1] + c)
        mine = counts[self.rank] * t.element_size()
        post = lambda s: [self.mpi.Iallgatherv(  # noqa: E731
            MPI.IN_PLACE, [s[0], (list(counts), displs), s[2]])]
        return self._start("Iallgatherv", [t], post, (self.size - 1) * mine)

    def ireduce_scatter(self, send: torch.Tensor, recv: torch.Tensor, counts) -> Handle:
        """Nonblocking Reduce_scatter: the sum over ranks of ``send`` (``sum(counts)``
        elements), block r of it (``counts[r]`` elements) into rank r's ``recv``. Counted as
        ``(P-1)/P`` of ``send``'s bytes (a ring sends each block but its own once)."""
        if self.size == 1:
            return self._nothing(recv.copy_(send[:counts[0]]))
        nbytes = send.numel() * send.element_size()
        post = lambda s, r: [self.mpi.Ireduce_scatter(  # noqa: E731
            s, [r[0], counts[self.rank], r[2]], list(counts), op=MPI.SUM)]
        return self._start("Ireduce_scatter", [send, recv], post,
                           (self.size - 1) / self.size * nbytes, read_only=(True, "w"))

    def ialltoall(self, send: torch.Tensor, recv: torch.Tensor) -> Handle:
        """Nonblocking Alltoall: row r of ``send`` (size x chunk) goes to rank r, row r of
        ``recv`` (size x chunk) comes from rank r. Counted as (P-1)/P of ``send``'s bytes
        (the row a rank keeps does not travel)."""
        nbytes = send.numel() * send.element_size()
        per_rank = lambda s: [s[0], s[1] // self.size, s[2]]  # noqa: E731 - mpi4py: count per block
        return self._start("Ialltoall", [send, recv],
                           lambda s, r: [self.mpi.Ialltoall(per_rank(s), per_rank(r))],
                           (self.size - 1) / self.size * nbytes, read_only=(True, "w"))

    def ineighbor_allgather(self, graph, send: torch.Tensor, recv: torch.Tensor) -> Handle:
        """Nonblocking neighbour Allgather on the dist-graph communicator ``graph``.

        ``send`` goes to every destination of this rank; row j of ``recv``
        (indegree x len(send)) gets the j-th source's ``send``. ``graph`` is
        built from this communicator's group; its bytes count here
        (outdegree x the size of ``send``).
        """
        outdegree = graph.Get_dist_neighbors_count()[1]
        nbytes = send.numel() * send.element_size()
        return self._start("Ineighbor_allgather", [send, recv],
                           lambda s, r: [graph.Ineighbor_allgather(s, per_block(r, s))],
                           outdegree * nbytes, read_only=(True, "w"))

    def persistent(self, graph, send: torch.Tensor, recv: torch.Tensor, dests, sources,
                   tag: int = 0) -> "PersistentRequests":
        """Persistent requests on ``graph``: ``send`` to each of ``dests``, row j of ``recv``
        from ``sources[j]`` (see :class:`PersistentRequests`)."""
        return PersistentRequests(self, graph, send, recv, dests, sources, tag)

    # ---- small objects (uncounted: log points, records, agreement) ------

    def _wait(self, requests: list, statuses: list | None = None) -> None:
        """Block until ``requests`` complete: ``MPI_Waitall``, or where waits yield
        (:func:`mpisgd.mpienv.yield_when_waiting`) ``MPI_Testall`` polled with
        ``sched_yield``; the time counts as communication and as waiting."""
        t0 = time.perf_counter()
        if self.yield_wait:
            while not MPI.Request.Testall(requests, statuses):
                os.sched_yield()
        else:
            MPI.Request.Waitall(requests, statuses)
        dt = time.perf_counter() - t0
        self.comm_time += dt
        self.wait_time += dt

    def barrier(self) -> None:
        """Blocking barrier, after everything queued has been posted (waits as :meth:`Handle.wait`)."""
        self.flush()
        if self.size > 1:
            self._wait([self.mpi.Ibarrier()])

    def gather(self, obj, root: int = 0):
        """mpi4py's pickled gather of a small object, after everything queued is posted:
        the list on ``root``, ``None`` elsewhere."""
        self.flush()
        return self.mpi.gather(obj, root=root)

    def allgather(self, obj) -> list:
        """mpi4py's pickled allgather of a small object, after everything queued is posted."""
        self.flush()
        return self.mpi.allgather(obj)

    def counters(self) -> dict:
        """Bytes sent, seconds spent in and blocked on communication, and seconds of
        staging copies on the device's side stream (CUDA events; waits for copies in flight)."""
        return {"bytes_sent": self.bytes_sent, "comm_time": self.comm_time,
                "wait_time": self.wait_time,
                "staging_time": self.staging_before + self.boundary.copy_seconds()}

    def load_counters(self, saved: dict) -> None:
        """Continue from :meth:`counters` (a resumed run's, taken by an earlier process)."""
        self.bytes_sent, self.comm_time = saved["bytes_sent"], saved["comm_time"]
        self.wait_time = saved["wait_time"]
        self.staging_before = saved["staging_time"] - self.boundary.copy_seconds()
