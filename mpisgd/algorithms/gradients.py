"""The mean of the gradients over a communicator, bucketed and overlapped with backward.

PyTorch DDP's scheme, on a :class:`~mpisgd.flat.ParamBuffer`: gradients
live in buckets in reverse parameter order; a post-accumulate-grad hook
starts a nonblocking ``Iallreduce`` on a bucket as soon as its last
gradient is ready, so the exchange overlaps the rest of backward.
:meth:`GradientMean.synchronize` completes every bucket (and averages the
floating buffers, BatchNorm's statistics, so replicas stay equal).

``sync`` is this mean over all ranks and the optimizer step; with groups
(:mod:`mpisgd.groups`) every other algorithm runs it on the group's ranks
before its own step. Two levels (``sync`` with groups): a bucket's sum is
reduce-scattered inside the group, each rank's block averaged across groups
(``Iallreduce`` on the cross communicator), and the blocks all-gathered
inside the group:

    g = (1/P) sum_groups sum_ranks g_r    (P = G m; three collectives per bucket)

Compressed buckets (``compress``): each bucket's mean goes through a
:class:`~mpisgd.compress.CompressedMean` instead of the Allreduce,

    g = (1/m) sum_i D(C(g_i + e_i)),    e_i <- g_i + e_i - D(C(g_i + e_i))

with error feedback e_i per bucket. The buckets then hold the undivided
gradients (the mean's 1/m is the compressor's); BatchNorm buffers keep the
plain Allreduce. Every replica decodes the same data, so replicas stay
identical.
"""
from __future__ import annotations

import contextlib

import torch

from ..groups import bounds


class GradientMean:
    """The bucketed, overlapped gradient mean of ``flat`` over ``comm``.

    Args:
        comm: the :class:`~mpisgd.comm.Comm` of the ranks whose gradients are averaged
            (with ``groups``: the group's).
        flat: the :class:`~mpisgd.flat.ParamBuffer` (its buckets are the exchange's).
        overlap: start each bucket's exchange from backward (else all in :meth:`synchronize`).
        compressors: one :class:`~mpisgd.compress.CompressedMean` per bucket, or ``None``.
        cross: with two levels, the :class:`~mpisgd.comm.Comm` across groups (``comm`` then
            is the group's); ``None``: one level.
        before: called at the start of each exchange (an injected link delay).
    """

    def __init__(self, comm, flat, overlap: bool = True, compressors=None, cross=None,
                 before=None):
        self.comm, self.flat, self.overlap = comm, flat, overlap
        self.cross = cross if cross is not None and cross.size > 1 else None
        self.before = before
        trainable = flat.trainable
        self._sizes = [sum(trainable[i] for i in b.params) for b in flat.buckets]
        self._bucket_grads = [flat.grad[b.start:b.end] for b in flat.buckets]
        self.compressors = compressors
        size = comm.size * (self.cross.size if self.cross is not None else 1)
        self._scale = 1.0 if compressors is not None else 1.0 / size   # the mean's 1/P
        if self.cross is not None:      # each bucket's blocks, and this rank's scratch block
            self._counts = [[hi - lo for lo, hi in bounds(g.numel(), comm.size)]
                            for g in self._bucket_grads]
            self._blocks = [bounds(g.numel(), comm.size)[comm.rank] for g in self._bucket_grads]
            self._scratch = [torch.empty(c[comm.rank], dtype=flat.dtype, device=flat.device)
                             for c in self._counts]
        self.reset()
        self._accumulating = False
        for i, p in enumerate(flat.params):
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(self._hook(i))

    def reset(self) -> None:
        """Ready for the next backward (after the optimizer step)."""
        self._ready = [0] * len(self._sizes)          # gradients ready per bucket
        self._fired = [False] * len(self.flat.params)
        self._in_slot = [False] * len(self.flat.params)   # final gradient in its slot, not yet / P
        self._slotted = [0] * len(self._sizes)             # how many, per bucket
        self._handles = []                            # launched buckets, in bucket order
        self.synchronized = False

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
            if self._fired[i] or self.synchronized:
                raise RuntimeError(
                    "a second gradient arrived for a parameter before algo.step(): call "
                    "algo.step() after each backward(), or wrap the earlier backward "
                    "passes of an accumulation in `with algo.no_sync():`")
            self._adopt(i)
            self._fired[i] = True
            self._ready[k] += 1
            # launch when a bucket completes; poke the ones in flight on every gradient
            if self.overlap and (self._handles or self._ready[k] == self._sizes[k]):
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
        sum, the mean (two levels: its reduce-scatter inside the group); ``blocking``:
        complete it before returning.

        Elementwise every gradient becomes ``g * (1/P)`` once, before the sum, as with
        ``Comm.iallreduce(average=True)``'s pre-division: the average is bitwise what it
        was. The blocking bucket (the last one, nothing left to overlap) goes through
        :meth:`Comm.allreduce`, which hands a host buffer to ``MPI_Allreduce`` without a
        handle (at one bucket per model, that bookkeeping was a tenth of a 4 MB exchange).
        """
        if self.compressors is not None:       # undivided: the codec takes the mean
            self._handles.append(self.compressors[k].start())
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
        if self.cross is not None:
            self._handles.append(self.comm.ireduce_scatter(grad, self._scratch[k],
                                                           self._counts[k]))
        elif blocking:
            self.comm.allreduce(grad)
        else:
            self._handles.append(self.comm.iallreduce(grad))

    def synchronize(self) -> None:
        """Wait until every gradient is the mean (as Horovod's); idempotent until :meth:`reset`.

        Buckets not launched during backward are launched here in order, the last
        one with the blocking Allreduce since nothing is left to overlap.
        """
        if self.synchronized:
            return
        if self.before is not None:
            self.before()
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
            if self.cross is not None:
                extra[-1].wait()
                extra[-1] = self.cross.iallreduce(self.flat.buffers, average=True)
        if self.compressors is not None:   # then every bucket's second exchange, in order
            self._launch(last)
            for cm, pending in zip(self.compressors, self._handles):
                cm.finish(pending)
        elif self.cross is not None:
            self._launch(last)
            self._two_levels()
        else:
            self._launch(last, blocking=True)
            for h in self._handles:
                h.wait()
        for h in extra:
            h.wait()
        self.synchronized = True

    def _two_levels(self) -> None:
        """Each bucket's block across groups, then the blocks inside the group, pipelined:
        bucket k's cross exchange starts as soon as its reduce-scatter is done."""
        across = []
        for k, h in enumerate(self._handles):
            h.wait()
            lo, hi = self._blocks[k]
            block = self._bucket_grads[k][lo:hi]
            block.copy_(self._scratch[k])
            across.append(self.cross.iallreduce(block))
        inside = []
        for k, h in enumerate(across):
            h.wait()
            inside.append(self.comm.iallgatherv(self._bucket_grads[k], self._counts[k]))
        for h in inside:
            h.wait()

    def series(self) -> dict:
        """With ``compress``, the buckets' counters summed (:func:`mpisgd.compress.series`)."""
        if self.compressors is None:
            return {}
        from ..compress import series
        return series(self.compressors)

    def state_dict(self) -> list | None:
        """Each compressed bucket's residual (and PowerSGD's Q), or ``None``."""
        if self.compressors is None:
            return None
        return [cm.state_dict() for cm in self.compressors]

    def load_state_dict(self, state) -> None:
        if self.compressors is not None:
            for cm, saved in zip(self.compressors, state):
                cm.load_state_dict(saved)
