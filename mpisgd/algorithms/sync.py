"""Fully synchronous SGD: gradients averaged every step, overlapped with backward.

Cooperative SGD A(1, J, 0): every worker applies the same averaged gradient

    g = (1/m) sum_i g_i(x),    x <- opt_step(x, g)

so all replicas stay identical (floating buffers, BatchNorm's running
statistics, are averaged at every step too). Gradients live in one flat buffer split into
buckets of ``bucket_mb`` megabytes in reverse parameter order; a
post-accumulate-grad hook starts a nonblocking ``Iallreduce`` on a bucket as
soon as its last gradient is ready, so the exchange overlaps the rest of
backward (PyTorch DDP's scheme). :meth:`SyncSGD.step` waits for the buckets
and then calls the wrapped optimizer.

Example::

    algo = mpisgd.build("sync", model, opt, comm=MPI.COMM_WORLD, bucket_mb=25)
    for x, y in loader:
        opt.zero_grad(set_to_none=False)
        F.cross_entropy(model(x), y).backward()
        algo.step()

For gradient accumulation, wrap all but the last backward in
``with algo.no_sync():`` as with DDP.
"""
from __future__ import annotations

import contextlib
import os
import time

import torch

from .._mpi import MPI

from .base import Algorithm
from .options import BUCKET_MB, OVERLAP


class SyncSGD(Algorithm):
    """Synchronous data-parallel SGD with bucketed, overlapped gradient Allreduce.

    Options:
        bucket_mb: bucket size in MB (default 25, as DDP).
        overlap: start each bucket's Allreduce from backward (default True);
            False exchanges all buckets in :meth:`step`.
    """

    name = "sync"
    options = (BUCKET_MB, OVERLAP.but(default=True))

    def __init__(self, model, optimizer, comm=None, **options):
        super().__init__(model, optimizer, comm, **options)
        trainable = self.flat.trainable
        self._sizes = [sum(trainable[i] for i in b.params) for b in self.flat.buckets]
        if self.opts["overlap"] and self.flat.device.type == "cuda" and \
                MPI.Query_thread() < MPI.THREAD_SERIALIZED:
            self.warn("the MPI library gives less than MPI_THREAD_SERIALIZED, and autograd runs "
                      "CUDA gradient hooks on its own threads: overlap is off")
            self.opts["overlap"] = False
        self._scale = 1.0 / self.comm.size            # the mean's 1/P, applied by _adopt
        self._views = [self.flat.grad_view(i) if t else None for i, t in enumerate(trainable)]
        self._specs = {}                              # bucket -> (address, MPI buffer spec)
        self._reset()
        self._accumulating = False
        for i, p in enumerate(self.flat.params):
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(self._hook(i))

    def _reset(self) -> None:
        self._ready = [0] * len(self._sizes)          # gradients ready per bucket
        self._fired = [False] * len(self.flat.params)
        self._handles = []                            # launched buckets, in bucket order
        self._synchronized = False

    def bucket_bytes(self):
        return self.opts["bucket_mb"] * 1e6

    @contextlib.contextmanager
    def no_sync(self):
        """Accumulate gradients locally (no communication) inside this block."""
        self._accumulating = True
        try:
            yield
        finally:
            self._accumulating = False

    def _hook(self, i: int):
        def on_grad(param):
            if self._accumulating:
                return
            k = self.flat.bucket_of[i]
            if self._fired[i] or self._synchronized:
                raise RuntimeError(
                    "a second gradient arrived for a parameter before algo.step(): call "
                    "algo.step() after each backward(), or wrap the earlier backward "
                    "passes of an accumulation in `with algo.no_sync():`")
            self._adopt(i)
            self._fired[i] = True
            self._ready[k] += 1
            # launch when a bucket completes; poke the ones in flight on every gradient
            if self.opts["overlap"] and (self._handles or self._ready[k] == self._sizes[k]):
                self._launch_ready()
        return on_grad

    def _launch_ready(self) -> None:
        """Launch complete buckets in bucket order (collectives must match on every rank).

        The last bucket completes when backward ends, with nothing left to
        overlap: :meth:`synchronize` sends it with the blocking Allreduce.
        """
        for h in self._handles:            # poke MPI progress on the oldest bucket in flight
            if not h.done:
                h.test()
                break
        last = len(self._sizes) - 1
        while len(self._handles) < last and \
                self._ready[len(self._handles)] == self._sizes[len(self._handles)]:
            self._launch(len(self._handles))

    def _adopt(self, i: int) -> None:
        """Put parameter ``i``'s final gradient in its slot of the flat buffer, divided by P.

        The mean's 1/P is applied as each gradient becomes final, while backward has just
        written it (as DDP does), not as a pass over the whole bucket before its Allreduce:
        a fresh gradient (after ``zero_grad(set_to_none=True)``) is scaled as it is copied
        in, so its division costs no pass of its own; one already in its slot is scaled in
        place. Elementwise it is the same ``g * (1/P)`` that
        ``Comm.iallreduce(average=True)`` pre-divides with, so the averages are bitwise the
        same as before (and exact for a power-of-two P).
        """
        view = self._views[i]
        if view is None:                 # frozen: no gradient, its slot stays zero
            return
        p, scale = self.flat.params[i], self._scale
        g = p.grad
        if g is None:                    # unused parameter: a zero gradient
            view.zero_()
            p.grad = view
        elif g.data_ptr() != view.data_ptr():
            if scale == 1.0:
                view.copy_(g)
            else:
                torch.mul(g, scale, out=view)
            p.grad = view
        elif scale != 1.0:
            view.mul_(scale)

    def _launch(self, k: int, blocking: bool = False) -> None:
        """Start the Allreduce of bucket ``k`` (its gradients are divided by P already: the
        sum is the mean); ``blocking``: complete it before returning."""
        b = self.flat.buckets[k]
        grad = self.flat.grad[b.start:b.end]
        if blocking and self._direct(grad):
            self._allreduce_now(k, grad)
        else:
            self._handles.append(self.comm.iallreduce(grad, blocking=blocking))

    def _direct(self, grad) -> bool:
        """Whether a blocking bucket goes straight to MPI: a CPU buffer that needs no staging
        (MPI reads and writes it where it is) on more than one rank."""
        comm = self.comm
        return comm.size > 1 and grad.device.type == "cpu" and not comm._needs_staging(grad)

    def _allreduce_now(self, k: int, grad) -> None:
        """Sum bucket ``k`` over the ranks, in place, before returning: the MPI call
        ``Comm.iallreduce(grad, blocking=True)`` makes (the blocking ``MPI_Allreduce``, or
        where waits yield an ``MPI_Iallreduce`` polled with ``sched_yield``), counted in
        Comm's counters the same way, without the handle and its bookkeeping. The last
        bucket has nothing left to overlap, and at one bucket per model that Python was
        a tenth of a 4 MB exchange."""
        comm = self.comm
        comm.flush()                     # everything queued before it goes first, on every rank
        comm._claim(grad)                # refuses memory that a pending operation owns
        spec = self._specs.get(k)
        if spec is None or spec[0] != grad.data_ptr():
            spec = self._specs[k] = (grad.data_ptr(), comm.spec(grad))
        comm.bytes_sent += 2.0 * (comm.size - 1) / comm.size * grad.numel() * grad.element_size()
        mpi = getattr(comm, "mpi", None)
        if mpi is None:                  # the communicator's earlier name
            mpi = comm.comm
        t0 = time.perf_counter()
        if comm.yield_wait:
            request = mpi.Iallreduce(MPI.IN_PLACE, spec[1])
            posted = time.perf_counter()
            while not request.Test():
                os.sched_yield()
            done = time.perf_counter()
            comm.comm_time += done - t0
            comm.wait_time += done - posted
        else:
            mpi.Allreduce(MPI.IN_PLACE, spec[1])
            spent = time.perf_counter() - t0
            comm.comm_time += spent      # a blocking call: all of it waiting
            comm.wait_time += spent

    def synchronize(self) -> None:
        """Wait until every gradient is the average over workers (as Horovod's).

        Call it between backward and :meth:`step` to read or clip the
        averaged gradients; :meth:`step` calls it when you have not. Buckets
        not launched during backward are launched here in order, the last
        one with the blocking Allreduce since nothing is left to overlap.
        """
        if self._synchronized:
            return
        self._round_delay()
        for i, fired in enumerate(self._fired):
            if not fired:     # unused parameter, or no_sync accumulation
                self._adopt(i)
        # Every rank issues the same sequence: buckets 0 .. last-1 (from hooks or
        # here), the buffers, the last bucket. How many buckets the hooks
        # launched differs between ranks; this order does not.
        last = len(self._sizes) - 1
        for k in range(len(self._handles), last):
            self._launch(k)
        extra = []
        if self.flat.buffers.numel():   # BatchNorm statistics: averaged, so replicas stay equal
            extra.append(self.comm.iallreduce(self.flat.buffers, average=True))
        self._launch(last, blocking=True)
        for h in self._handles + extra:
            h.wait()
        self._synchronized = True

    def _step(self) -> None:
        """Average the gradients (if :meth:`synchronize` has not), then the optimizer step."""
        self.synchronize()
        self.optimizer.step()
        self._reset()
        self.steps += 1
        self.rounds += 1

    @property
    def replicas_identical(self) -> bool:
        """Always: same averaged gradients, buffers averaged every step."""
        return True
