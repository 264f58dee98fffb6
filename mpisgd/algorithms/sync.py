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

Compressed gradients (``compress``: fp16, bf16, int8, topk:RATIO,
powersgd:RANK; docs/compression.md): each bucket's mean goes through a
:class:`~mpisgd.compress.CompressedMean` instead of the Allreduce,

    g = (1/m) sum_i D(C(g_i + e_i)),    e_i <- g_i + e_i - D(C(g_i + e_i))

with error feedback e_i per bucket (``error_feedback``, default on; PowerSGD
compresses each parameter of >= 2 dims as a matrix). The buckets then hold
the undivided gradients (the mean's 1/m is the compressor's), a bucket's
first exchange still starts from backward with ``overlap``, and
:meth:`SyncSGD.synchronize` completes them in bucket order; BatchNorm
buffers keep the plain Allreduce. Every replica decodes the same data, so
replicas stay identical. The dense Allreduce of each bucket is timed once
at construction, uncounted, so that the run record's ``compress/*``
figures say whether compression paid (:func:`mpisgd.compress.paid`).
"""
from __future__ import annotations

import contextlib

from .._mpi import MPI

from .base import Algorithm
from .options import BUCKET_MB, COMPRESS, OVERLAP


class SyncSGD(Algorithm):
    """Synchronous data-parallel SGD with bucketed, overlapped gradient Allreduce.

    Options:
        bucket_mb: bucket size in MB (default 25, as DDP).
        overlap: start each bucket's Allreduce from backward (default True);
            False exchanges all buckets in :meth:`step`.
        compress: ``none`` (default), or the compressed format of the gradient
            buckets' mean (module docstring); error_feedback: keep each rank's
            compression residual per bucket (default True).
    """

    name = "sync"
    options = (BUCKET_MB, OVERLAP.but(default=True), *COMPRESS)

    def __init__(self, model, optimizer, comm=None, **options):
        super().__init__(model, optimizer, comm, **options)
        trainable = self.flat.trainable
        self._sizes = [sum(trainable[i] for i in b.params) for b in self.flat.buckets]
        if self.opts["overlap"] and self.flat.device.type == "cuda" and \
                MPI.Query_thread() < MPI.THREAD_SERIALIZED:
            self.warn("the MPI library gives less than MPI_THREAD_SERIALIZED, and autograd runs "
                      "CUDA gradient hooks on its own threads: overlap is off")
            self.opts["overlap"] = False
        self._scale = 1.0 / self.comm.size            # the mean's 1/P (see _adopt, _launch)
        self._bucket_grads = [self.flat.grad[b.start:b.end] for b in self.flat.buckets]
        self._compressors = None
        if self.opts["compress"] != "none":
            self._scale = 1.0                         # buckets hold sums; the mean is the codec's
            self._compressors = self._make_compressors()
        self._reset()
        self._accumulating = False
        for i, p in enumerate(self.flat.params):
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(self._hook(i))

    def _make_compressors(self) -> list:
        """One :class:`~mpisgd.compress.CompressedMean` per bucket (the shapes of its
        parameters for PowerSGD), its dense time measured on the telemetry (collective)."""
        from ..compress import CompressedMean
        flat, out = self.flat, []
        for bucket, grad in zip(flat.buckets, self._bucket_grads):
            shapes = [(flat.offsets[i][0] - bucket.start, tuple(flat.params[i].shape))
                      for i in bucket.params]
            cm = CompressedMean(self.comm, grad, self.opts["compress"], shapes,
                                self.opts["error_feedback"])
            cm.calibrate(self.telemetry)
            out.append(cm)
        return out

    def _reset(self) -> None:
        self._ready = [0] * len(self._sizes)          # gradients ready per bucket
        self._fired = [False] * len(self.flat.params)
        self._in_slot = [False] * len(self.flat.params)   # final gradient in its slot, not yet / P
        self._slotted = [0] * len(self._sizes)             # how many, per bucket
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
        k = self.flat.bucket_of[i]

        def on_grad(param):
            if self._accumulating:
                return
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
        """Put parameter ``i``'s final gradient in its slot of the flat buffer.

        A fresh gradient (``zero_grad(set_to_none=True)``, PyTorch's default) is divided by
        P as it is copied in (:meth:`~mpisgd.flat.ParamBuffer.adopt_grad`, as DDP does), so
        the mean's division costs no pass of its own; one accumulated in its slot already
        (``set_to_none=False``) is marked, and :meth:`_launch` divides its bucket in one pass.
        """
        if self.flat.adopt_grad(i, self._scale):
            self._in_slot[i] = True
            self._slotted[self.flat.bucket_of[i]] += 1

    def _launch(self, k: int, blocking: bool = False) -> None:
        """Divide by P what is still undivided in bucket ``k`` and start the Allreduce of its
        sum, the mean; ``blocking``: complete it before returning.

        Elementwise every gradient becomes ``g * (1/P)`` once, before the sum, as with
        ``Comm.iallreduce(average=True)``'s pre-division: the average is bitwise what it
        was. The blocking bucket (the last one, nothing left to overlap) goes through
        :meth:`Comm.allreduce`, which hands a host buffer to ``MPI_Allreduce`` without a
        handle (at one bucket per model, that bookkeeping was a tenth of a 4 MB exchange).
        """
        if self._compressors is not None:       # undivided: the codec takes the mean
            self._handles.append(self._compressors[k].start())
            return
        grad = self._bucket_grads[k]
        slotted = self._slotted[k]
        if slotted and self._scale != 1.0:
            if slotted == self._sizes[k]:             # all of it: one pass over the bucket
                grad.mul_(self._scale)
            else:
                for i in self.flat.buckets[k].params:
                    if self._in_slot[i]:
                        self.flat.grad_view(i).mul_(self._scale)
        if blocking:
            self.comm.allreduce(grad)
        else:
            self._handles.append(self.comm.iallreduce(grad))

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
        if self._compressors is not None:   # then every bucket's second exchange, in order
            self._launch(last)
            for cm, pending in zip(self._compressors, self._handles):
                cm.finish(pending)
            for h in extra:
                h.wait()
            self._synchronized = True
            return
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
        """Always: same averaged gradients (compressed too: every rank decodes the same
        data), buffers averaged every step."""
        return True

    def worker_series(self) -> dict:
        """The base figures, and with ``compress`` the buckets' counters summed
        (``compress/bytes``, ``dense_bytes``, ``codec_seconds``, ``exchange_seconds``,
        ``dense_seconds``, ``rounds``: :func:`mpisgd.compress.series`)."""
        out = super().worker_series()
        if self._compressors is not None:
            from ..compress import series
            out.update(series(self._compressors))
        return out

    def state_dict(self) -> dict:
        """The base state, and with ``compress`` each bucket's residual (and PowerSGD's Q)."""
        state = super().state_dict()
        if self._compressors is not None:
            state["compress"] = [cm.state_dict() for cm in self._compressors]
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self._compressors is not None:
            for cm, saved in zip(self._compressors, state["compress"]):
                cm.load_state_dict(saved)
