"""Communication rounds on flat tensors: the mixing axis of Cooperative SGD, A(tau, W, v).

A round owns what one kind of round needs (its buffers, a graph, a centre
variable) and has a start/finish interface:

* ``start(k)`` posts round k's communication (nonblocking) and returns its
  :class:`~mpisgd.comm.Handles` (:meth:`~mpisgd.comm.Handle.all`): the
  operations in flight and what applies them to ``x`` once they complete;
* ``finish(pending)`` waits for it, which applies it;
* ``run(k)`` does both.

:class:`~mpisgd.algorithms.scheduled.Scheduled` composes a round with a
schedule (when) and an optimizer-state policy; ``local``, ``easgd``,
``gossip`` and ``cooperative`` are such compositions. ``simultaneous``
rounds (EASGD's) take the local step between ``start`` and ``finish``, from
the same x as the round; the others run after it.

A training loop of your own can run one round on a flat buffer without an
algorithm (as PyTorch's ``average_parameters``)::

    from mpi4py import MPI
    from mpisgd.comm import Comm
    from mpisgd.algorithms.rounds import Average, Mix
    from mpisgd import topology

    comm = Comm(MPI.COMM_WORLD)
    x = torch.nn.utils.parameters_to_vector(model.parameters())
    Average(comm, x).run()                                  # x <- mean over ranks
    Mix(comm, topology.build("ring", comm.size), x).run()   # x_i <- sum_j W_ij x_j
    torch.nn.utils.vector_to_parameters(x, model.parameters())

(An algorithm's :class:`~mpisgd.flat.ParamBuffer` makes ``x`` a view of the
parameters themselves, so nothing is copied back.)
"""
from __future__ import annotations

import abc

import torch

from .. import ops
from ..comm import Handle, Handles
from ..mixing import Mixer
from ..staging import upload


class Round(abc.ABC):
    """One kind of communication round on the flat tensor ``x`` over a
    :class:`~mpisgd.comm.Comm` (bytes and times count there)."""

    #: The local step runs between :meth:`start` and :meth:`finish` (from the same x).
    simultaneous = False
    #: The round keeps its own staggered timing, asked after every step
    #: (:class:`~mpisgd.algorithms.streaming.Fragmented`); else the schedule says when.
    stepwise = False

    @property
    def averaged(self) -> torch.Tensor | None:
        """What the round averages into, that an outer optimizer steps
        (:mod:`mpisgd.algorithms.outer`): ``x`` (``None`` where this rank holds none)."""
        return self.x

    @abc.abstractmethod
    def start(self, k: int = 0) -> Handles:
        """Post round ``k``'s communication; returns its pending :class:`Handles`."""

    def finish(self, pending: Handles) -> None:
        """Complete the round (its handles' ``wait()`` applies it to ``x``)."""
        pending.wait()

    def run(self, k: int = 0) -> None:
        """One blocking round ``k``."""
        self.finish(self.start(k))

    def close(self) -> None:
        """Free the MPI objects the round made (collective, no round in flight)."""

    def state_dict(self) -> dict:
        """What the round keeps between rounds besides x (auxiliaries, a centre), for a
        checkpoint; :meth:`load_state_dict` copies it back in place."""
        return {}

    def series(self) -> dict:
        """This worker's figures of the round for the run record (``{"group/name": number}``)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        for name, value in state.items():
            getattr(self, name).copy_(value)


class Average(Round):
    """x <- (1/m) sum_j x_j over the m ranks, and the floating ``buffers`` likewise:
    the round of A(tau, 11^T/m, 0) (local SGD, PR-SGD); one in-place Allreduce each."""

    def __init__(self, comm, x: torch.Tensor, buffers: torch.Tensor | None = None):
        self.comm, self.x = comm, x
        self.buffers = buffers if buffers is not None and buffers.numel() else None

    def start(self, k: int = 0) -> Handles:
        pending = [self.comm.iallreduce(self.x, average=True)]
        if self.buffers is not None:
            pending.append(self.comm.iallreduce(self.buffers, average=True))
        return Handle.all(*pending)


class Mix(Round):
    """X <- X W_k over m workers (rank i holds x_i) and v auxiliary variables z_a.

    In the row convention of :mod:`mpisgd.topology` (W_k[i, j] != 0: node i
    listens to node j), nodes m.. of the topology being the auxiliaries:

        x_i <- sum_{j <= m} W[i, j] x_j + sum_a W[i, m+a] z_a
        z_a <- sum_{j <= m} W[m+a, j] x_j + sum_b W[m+a, m+b] z_b

    The workers' part is a neighbour exchange on an MPI dist-graph
    communicator (:class:`~mpisgd.mixing.Mixer`, ``exchange`` one of its
    strategies). The z_a are replicated on every worker: a round adds one
    ``Iallreduce`` of the v contributions W[m+a, i] x_i, overlapped with the
    exchange, after which every worker updates every z_a alike.
    ``snapshot=True`` exchanges a copy of x taken at :meth:`start`, so x may
    change before :meth:`finish` (a round overlapped with the next step).
    """

    def __init__(self, comm, topology, x: torch.Tensor, exchange: str = "auto",
                 snapshot: bool = False):
        self.comm, self.topology, self.x = comm, topology, x
        self.mixer = Mixer(comm, topology, x, exchange, snapshot=snapshot)
        self.v = topology.n - comm.size
        self.aux = x.expand(self.v, x.numel()).clone()        # z_a = x_0, replicated
        self._contrib = torch.empty_like(self.aux)

    def start(self, k: int = 0) -> Handles:
        mixed = self.mixer.start(k)
        if not self.v:
            return mixed
        W = self.topology.matrix(k).to(self.x.dtype)
        sent, m, i = self.mixer.send, self.comm.size, self.comm.rank
        torch.mul(upload(W[m:, i], sent.device)[:, None], sent[None, :], out=self._contrib)
        to_worker, among = upload(W[i, m:], sent.device), upload(W[m:, m:], sent.device)

        def auxiliaries():        # after the workers' mixing and the contributions' sum
            self.x.addmv_(self.aux.t(), to_worker)                     # + sum_a W[i, m+a] z_a (old z)
            self.aux.copy_(torch.addmm(self._contrib, among, self.aux))   # z <- C + W_zz z
        return Handle.all(mixed, self.comm.iallreduce(self._contrib), finish=auxiliaries)

    def close(self) -> None:
        self.mixer.close()

    def state_dict(self) -> dict:
        return {"aux": self.aux} if self.v else {}


class Elastic(Round):
    """EASGD's round, x and c from the same moment (Zhang et al. 2015):

        e_i = alpha (x_i - c);   x_i <- x_i - e_i;   c <- c + sum_i e_i

    (the local step, x_i -= eta g_i(x_i), runs between :meth:`start` and
    :meth:`finish`: ``simultaneous``). Where c lives (``center``):

    * ``"replicated"``: every rank holds c; the fused elastic kernel
      (:func:`mpisgd.ops.elastic`), then one ``Iallreduce`` of the e_i;
    * ``"rank0"``: rank 0 holds c; a round broadcasts it, each rank forms
      its e_i, and an ``Ireduce`` sums them into rank 0's c.

    ``compressed(buf)`` (replicated centre): makes the
    :class:`~mpisgd.compress.CompressedMean` that sends the e_i instead of the
    Allreduce; c += m mean_i D(C(e_i + r_i)), the same on every rank (each
    decodes the same data), x_i -= e_i exact, the error r_i fed back.
    """

    simultaneous = True

    def __init__(self, comm, x: torch.Tensor, alpha: float, center: str = "replicated",
                 compressed=None):
        self.comm, self.x, self.alpha = comm, x, alpha
        self.replicated = center == "replicated"
        self.holds = self.replicated or comm.rank == 0        # c itself, not a scratch copy
        self.center = x.clone() if self.holds else torch.empty_like(x)
        self._diff = torch.empty_like(x)
        self.mean = compressed(self._diff) if compressed is not None else None

    def start(self, k: int = 0) -> Handles:
        x, c, e = self.x, self.center, self._diff
        if not self.replicated:
            self.comm.bcast(c, 0)                     # rank 0's c, everywhere
        ops.elastic(x, c, e, self.alpha)              # e_i, and x_i -= e_i (exact)
        if self.mean is not None:                     # c += m * the compressed mean of the e_i
            m = self.comm.size
            return Handle.all(self.mean.start(), finish=lambda: c.add_(e, alpha=m))
        summed = self.comm.iallreduce(e) if self.replicated else \
            self.comm.ireduce(e, 0)                   # sum_i e_i, into rank 0's e
        return Handle.all(summed, finish=(lambda: c.add_(e)) if self.holds else None)

    def state_dict(self) -> dict:
        out = {"center": self.center} if self.holds else {}
        if self.mean is not None:
            out["compressor"] = self.mean.state_dict()
        return out

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        saved = state.pop("compressor", None)
        super().load_state_dict(state)
        if saved is not None:
            self.mean.load_state_dict(saved)

    def series(self) -> dict:
        """With compression, its counters (``compress/...``, :func:`mpisgd.compress.series`)."""
        if self.mean is None:
            return {}
        from ..compress import series
        return series([self.mean])

    @property
    def averaged(self) -> torch.Tensor | None:
        """The centre c, where this rank holds it."""
        return self.center if self.holds else None

    def consensus(self, telemetry) -> torch.Tensor:
        """c, the same on every rank (``telemetry``: the uncounted Comm that broadcasts it)."""
        out = self.center.clone()
        if not self.replicated and telemetry.size > 1:
            telemetry.bcast(out, 0)
        return out
