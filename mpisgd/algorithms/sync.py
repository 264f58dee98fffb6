"""Fully synchronous SGD: gradients averaged every step, overlapped with backward.

Cooperative SGD A(1, J, 0): every worker applies the same averaged gradient

    g = (1/m) sum_i g_i(x),    x <- opt_step(x, g)

so all replicas stay identical (floating buffers, BatchNorm's running
statistics, are averaged at every step too). The mean is a
:class:`~mpisgd.algorithms.gradients.GradientMean`: buckets of ``bucket_mb``
megabytes in reverse parameter order, each bucket's nonblocking
``Iallreduce`` started from backward as soon as its last gradient is ready
(PyTorch DDP's scheme). :meth:`SyncSGD.step` waits for the buckets and then
calls the wrapped optimizer.

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
:class:`~mpisgd.compress.CompressedMean` with error feedback (see
:mod:`~mpisgd.algorithms.gradients`); the dense Allreduce of each bucket is
timed once at construction, uncounted, so that the run record's
``compress/*`` figures say whether compression paid
(:func:`mpisgd.compress.paid`).

With groups (``group_size`` G; :mod:`mpisgd.groups`) the mean runs in two
levels: each bucket reduce-scattered inside the group, each rank's block
averaged across the groups, the blocks all-gathered inside the group, so
every rank carries 1/G of the traffic between nodes. One group of all
ranks is this algorithm to the bit.
"""
from __future__ import annotations

from .._mpi import MPI

from ..errors import OptionError
from .base import Algorithm
from .gradients import GradientMean
from .options import BUCKET_MB, COMPRESS, GROUP_SIZE, OVERLAP
from .traits import Traits


class SyncSGD(Algorithm):
    """Synchronous data-parallel SGD with bucketed, overlapped gradient Allreduce.

    Options:
        bucket_mb: bucket size in MB (default 25, as DDP).
        overlap: start each bucket's Allreduce from backward (default True);
            False exchanges all buckets in :meth:`step`.
        compress: ``none`` (default), or the compressed format of the gradient
            buckets' mean (module docstring); error_feedback: keep each rank's
            compression residual per bucket (default True).
        group_size: with groups of G ranks, the mean in two levels (reduce-scatter inside
            a group, the blocks across groups, all-gather inside: :mod:`.gradients`).
    """

    name = "sync"
    own_gradient_mean = True     # in two levels with groups
    options = (BUCKET_MB, OVERLAP.but(default=True), *COMPRESS, GROUP_SIZE)

    @classmethod
    def traits(cls, opts=None) -> Traits:
        return Traits("lockstep")

    @classmethod
    def check(cls, opts: dict) -> None:
        super().check(opts)
        if opts["compress"] != "none" and opts["group_size"] != 1:
            raise OptionError("compress", "does not combine with groups yet (group_size "
                              f"{opts['group_size']}): compress the flat exchange, or group "
                              "without compression")

    def __init__(self, model, optimizer, comm=None, **options):
        super().__init__(model, optimizer, comm, **options)
        if self.opts["overlap"] and self.flat.device.type == "cuda" and \
                MPI.Query_thread() < MPI.THREAD_SERIALIZED:
            self.warn("the MPI library gives less than MPI_THREAD_SERIALIZED, and autograd runs "
                      "CUDA gradient hooks on its own threads: overlap is off")
            self.opts["overlap"] = False
        if self.groups is not None:                  # two levels, or one group of all ranks
            self.mean = GradientMean(self.groups.group, self.flat, self.opts["overlap"],
                                     cross=self.groups.cross, before=self._round_delay)
        else:
            compressors = self._make_compressors() if self.opts["compress"] != "none" else None
            self.mean = GradientMean(self.comm, self.flat, self.opts["overlap"], compressors,
                                     before=self._round_delay)

    def _make_compressors(self) -> list:
        """One :class:`~mpisgd.compress.CompressedMean` per bucket (the shapes of its
        parameters for PowerSGD), its dense time measured on the telemetry (collective)."""
        from ..compress import CompressedMean
        flat, out = self.flat, []
        for bucket in flat.buckets:
            grad = flat.grad[bucket.start:bucket.end]
            shapes = [(flat.offsets[i][0] - bucket.start, tuple(flat.params[i].shape))
                      for i in bucket.params]
            cm = CompressedMean(self.comm, grad, self.opts["compress"], shapes,
                                self.opts["error_feedback"])
            cm.calibrate(self.telemetry)
            out.append(cm)
        return out

    def bucket_bytes(self):
        return self.opts["bucket_mb"] * 1e6

    def no_sync(self):
        """Accumulate gradients locally (no communication) inside this block."""
        return self.mean.no_sync()

    def synchronize(self) -> None:
        """Wait until every gradient is the average over workers (as Horovod's).

        Call it between backward and :meth:`step` to read or clip the
        averaged gradients; :meth:`step` calls it when you have not.
        """
        self.mean.synchronize()

    def _step(self) -> int:
        """Average the gradients (if :meth:`synchronize` has not), then the optimizer step."""
        self.mean.synchronize()
        self._optimizer_step()
        self.mean.reset()
        return 1

    @property
    def replicas_identical(self) -> bool:
        """Always: same averaged gradients (compressed too: every rank decodes the same
        data), buffers averaged every step."""
        return True

    def worker_series(self) -> dict:
        """The base figures, and with ``compress`` the buckets' counters summed
        (``compress/bytes``, ``dense_bytes``, ``codec_seconds``, ``exchange_seconds``,
        ``dense_seconds``, ``rounds``: :func:`mpisgd.compress.series`)."""
        return {**super().worker_series(), **self.mean.series()}

    def state_dict(self) -> dict:
        """The base state, and with ``compress`` each bucket's residual (and PowerSGD's Q)."""
        state = super().state_dict()
        if self.mean.compressors is not None:
            state["compress"] = self.mean.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.mean.compressors is not None:
            self.mean.load_state_dict(state["compress"])
