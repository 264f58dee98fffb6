"""What every algorithm shares: the public API, its hooks, counters and checkpoints.

An algorithm is made in two steps. :meth:`Algorithm.spec` resolves and
validates its options, purely (no model, no communicator, no MPI): an
:class:`~mpisgd.algorithms.spec.AlgorithmSpec`, frozen, that raises
:class:`~mpisgd.errors.OptionError` naming a bad option.
:meth:`AlgorithmSpec.bind <mpisgd.algorithms.spec.AlgorithmSpec.bind>` then
wraps a model and its ``torch.optim`` optimizer (composition, never a
subclass of the optimizer) on a communicator: the constructor runs
:func:`~mpisgd.algorithms.binding.bind` (checks, agreement, flat buffer,
communicators, groups, in that order, on every rank), then sets up the
counters.
"""
from __future__ import annotations

import abc
import contextlib
import math
import time
import warnings
from types import MappingProxyType

import torch

from .._mpi import MPI

from .. import groups
from ..steptimes import StepClock
from . import rankstate
from .binding import bind
from .options import STRAGGLERS, Option, resolve
from .spec import AlgorithmSpec, _outside_frame
from .traits import Traits


class Algorithm(abc.ABC):
    """Base of all algorithms: the public API (docs/architecture.md).

    A new algorithm sets :attr:`name` and :attr:`options` (from
    :mod:`mpisgd.algorithms.options`) and implements :meth:`_step`; it may
    implement the other hooks below (each says when it runs), and is listed
    in the registry (:data:`mpisgd.algorithms.ALGORITHMS`). Periodic
    parameter mixing needs only a round: see
    :class:`~mpisgd.algorithms.scheduled.Scheduled`.
    """

    name = ""
    options: tuple[Option, ...] = ()
    is_worker = True
    owns_momentum = False    # True: the algorithm applies its own momentum (the optimizer's is 0)
    private_comm = False     # True: communicate on a Dup of comm (point-to-point with ANY_SOURCE)
    #: True: the algorithm averages gradients itself, in two levels with groups (sync);
    #: else with groups the group's ranks average theirs before every step (``inner``).
    own_gradient_mean = False
    collective_rounds = True  # rounds are collectives: every rank draws the same comm delay
    #: Why a gradient scaler (fp16) cannot step this algorithm ("": it can)
    unscalable = ""

    @classmethod
    def traits(cls, opts: dict | None = None) -> Traits | None:
        """How its ranks wait for each other, for the projector (:mod:`.traits`), with
        resolved options ``opts``; ``None``: not modelled."""
        return None

    @classmethod
    def declared(cls) -> tuple[Option, ...]:
        """Every option the algorithm accepts: its own, then the injected delays."""
        return cls.options + STRAGGLERS

    @classmethod
    def spec(cls, **options) -> AlgorithmSpec:
        """Resolve and validate ``options`` purely (:meth:`check`); raises
        :class:`~mpisgd.errors.OptionError` naming the first bad one."""
        opts = resolve(cls.name, cls.declared(), options)
        cls.check(opts)
        return AlgorithmSpec(cls, MappingProxyType(opts))

    @classmethod
    def worker_count(cls, size: int, opts: dict, node_ranks: int | None = None) -> int:
        """Workers among ``size`` ranks with resolved options ``opts`` (``node_ranks`` per
        node, for ``group_size`` node); ``ValueError`` if none."""
        return groups.check(size, groups.size_of(opts.get("group_size", 1), node_ranks))

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 comm=None, device=None, spec: AlgorithmSpec | None = None, **options):
        if spec is None:
            spec = self.spec(**options)
        elif options or spec.cls is not type(self):
            raise TypeError(f"give {self.name} a spec of its own or options, not both")
        #: The resolved options (a copy of the spec's).
        self.opts = dict(spec.options)
        comm = MPI.COMM_WORLD if comm is None else comm
        self.size, self.rank = comm.Get_size(), comm.Get_rank()   # local queries: no traffic
        self.optimizer, self.model = optimizer, model
        bind(self, comm, device)       # checks, agreement, flat buffer, communicators, groups
        self.steps = 0       # local optimizer steps taken (counted by step())
        self.rounds = 0      # communication rounds taken (step() adds what _step() returns)
        self.finished = False
        #: Each step's compute and wall time, with the injected delay (:mod:`mpisgd.steptimes`).
        self.timer = StepClock(self.rank, self.flat.device, self.stragglers)
        #: The losses given to :meth:`step` since a schedule last read them
        #: (:class:`~mpisgd.losses.LossWindow`), where one does (AdaComm); else ``None``.
        self.losses = None
        #: The gradient scaler the local optimizer steps through (fp16,
        #: :meth:`use_scaler`), or ``None``.
        self.scaler = None
        #: The clock schedules read: seconds of training, from the end of construction;
        #: the training driver sets its own, which starts at its start barrier and
        #: stops during log points.
        built = time.perf_counter()
        self.clock = lambda: time.perf_counter() - built

    # ---- hooks for subclasses -----------------------------------------

    @classmethod
    def check(cls, opts: dict) -> None:
        """Check option combinations that need nothing but the resolved ``opts`` (pure:
        no model, no communicator); raise :class:`~mpisgd.errors.OptionError`, warn on
        legal but degenerate settings. Runs in :meth:`spec`."""

    def validate(self) -> None:
        """Check what needs the ranks or the optimizer (``self.opts``, ``self.size``,
        ``self.rank`` and ``self.optimizer`` set); raise ``ValueError`` (an
        :class:`~mpisgd.errors.OptionError` when an option is to blame). Runs in :meth:`bind`.

        It may read files: a rank that fails while others pass ends them
        all with its message (one ``allgather``, before any other traffic but the node
        layout's, which every rank takes alike)."""

    def agreement(self) -> dict:
        """What else must be identical on every rank (e.g. a digest of W), checked
        with the options before any communication."""
        return {}

    def bucket_bytes(self) -> float | None:
        """Bucket size for the flat buffer (``None``: one bucket)."""
        return None

    def group_first(self) -> int:
        """The first rank in a group (the ranks before it serve)."""
        return 0

    @staticmethod
    def warn(message: str) -> None:
        """A ``UserWarning`` pointing at the user's line (the first frame outside mpisgd)."""
        warnings.warn(message, UserWarning, stacklevel=_outside_frame())

    @abc.abstractmethod
    def _step(self) -> int:
        """One local step and whatever communication follows it (:meth:`step` calls it,
        after the injected compute delay and with :attr:`steps` counting this step);
        returns how many rounds it started (0 or 1, more for fragments)."""

    # ---- the public API ----------------------------------------------

    @property
    def device(self) -> torch.device:
        """The device of the model, its flat buffer and everything the algorithm keeps."""
        return self.flat.device

    @property
    def telemetry(self):
        """A :class:`~mpisgd.comm.Comm` on the algorithm's communicator whose traffic is not
        counted (log points, evaluation), posted in the same order as the algorithm's."""
        return self._telemetry

    @property
    def period(self) -> int:
        """Local steps per communication round now (1 when every step communicates)."""
        return 1

    @property
    def rounds_based(self) -> bool:
        """Whether workers take different numbers of steps per round (a wall-clock budget):
        a training loop then counts :attr:`rounds`, not steps."""
        return False

    @property
    def workers(self) -> int:
        """Number of workers (with groups: of groups)."""
        return self.worker_count(self.size, self.opts, self._node_ranks)

    @property
    def worker_index(self) -> int:
        """This rank's worker index (0 .. workers-1; with groups, its group's)."""
        return self.rank // self.group_size

    @property
    def replicas(self) -> int:
        """Model replicas that draw data of their own: workers times the group size."""
        return self.workers * self.group_size

    @property
    def replica_index(self) -> int:
        """This rank's replica index (0 .. replicas-1); data streams key on it (without
        groups, the worker index)."""
        return self.rank

    def step(self, loss=None) -> None:
        """The local optimizer step plus whatever communication the schedule says.

        ``loss``: this step's mini-batch loss (a number or a 0-d tensor, not
        synchronised here); schedules that adapt to it (AdaComm) read it,
        others ignore it. With an injected compute delay (``straggler``) the
        step first spends it, as if the gradient had taken that much longer
        (see :meth:`_cancellation`); subclasses implement :meth:`_step`.
        """
        self._check_step()
        if loss is not None and self.losses is not None:
            self.losses.add(loss)
        self.timer.enter(self._cancellation)
        if self.inner is not None:
            self.inner.synchronize()
        self.steps += 1
        self.rounds += self._step()
        if self.inner is not None:
            self.inner.reset()
        self._after_step()
        self.timer.leave()

    def use_scaler(self, scaler) -> None:
        """Step the local optimizer through ``scaler`` (a :class:`mpisgd.precision.Scaler`:
        fp16's loss scaling); call ``scaler.scale(loss).backward()`` instead of
        ``loss.backward()``. A step it skips (a gradient not finite) is still counted
        and takes its rounds. ``ValueError`` where it cannot (:attr:`unscalable`)."""
        if self.unscalable:
            raise ValueError(f"{self.name}: {self.unscalable}; use bf16, which needs no scaler")
        self.scaler = scaler

    def _optimizer_step(self) -> None:
        """The local optimizer's step, through the gradient scaler if there is one."""
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)

    def no_sync(self):
        """Accumulate gradients locally (no communication) inside this block, as DDP's: with
        groups, the gradient mean inside the group waits for the backward outside it."""
        if self.inner is not None:
            return self.inner.no_sync()
        return contextlib.nullcontext()

    def _check_step(self) -> None:
        """Before a step is counted: raise if this rank may not step now."""

    def _after_step(self) -> None:
        """After :meth:`_step`, every worker (with groups, a group's leader speaks for it)."""

    def _cancellation(self):
        """A cheap ``() -> bool`` that ends an injected compute delay early (the work is
        abandoned: the parameter server's cancellation), or ``None``."""
        return None

    def _round_delay(self) -> None:
        """Spend the injected delay of one communication round (``comm_delay``), if any,
        as communication time (:meth:`Comm.link_delay`)."""
        if self.stragglers is not None:
            self.comm.link_delay(self.stragglers.comm())

    def rendezvous(self) -> None:
        """Bring every rank to a point where collectives are safe, mid-training.

        Every worker calls it the same number of times (the training driver
        does at each log point, before :meth:`consensus`). A no-op where
        every rank is a worker stepping in lock-step; algorithms with a
        centre rank drain their messages and meet the centre there.
        """

    def serve(self, on_rendezvous=None) -> None:
        """Run a dedicated centre/server rank until all workers finish.

        ``on_rendezvous()`` runs each time the workers meet in
        :meth:`rendezvous`, so the centre joins their collectives there.
        """
        raise RuntimeError(f"algorithm {self.name!r} has no server ranks: every rank is a worker, "
                           "call step() in the training loop instead of serve()")

    def finish(self) -> None:
        """Complete in-flight communication; afterwards :meth:`consensus` is final."""
        self.finished = True

    def consensus(self) -> torch.Tensor:
        """The model the algorithm outputs, as a new flat 1-D tensor, the same on every rank.

        Collective: every rank must call it. The base rule is the worker
        average (no communication while :attr:`replicas_identical`); its
        communication is telemetry and is not counted.
        """
        return self._average(self.flat.data)

    def consensus_distance(self) -> float:
        """Mean over workers of ||x_i - xbar||^2, xbar the workers' average; collective.

        Zero without communication while :attr:`replicas_identical`; its
        traffic is telemetry and is not counted.
        """
        if self.comm.size == 1 or self.replicas_identical:
            return 0.0
        mean = self._average(self.flat.data)
        mine = (self.flat.data - mean).square().sum().double() if self.is_worker else 0.0
        out = torch.tensor([float(mine)], dtype=torch.float64)
        return self._telemetry.allreduce(out).item() / self.replicas

    def consensus_buffers(self) -> torch.Tensor:
        """The floating buffers (BatchNorm statistics) of the consensus model: the worker average."""
        return self._average(self.flat.buffers)

    def finite(self) -> bool:
        """Whether this rank's parameters are all finite (one float64 sum: a NaN or an
        infinity anywhere makes it non-finite, and it cannot overflow)."""
        return math.isfinite(self.flat.data.sum(dtype=torch.float64).item())

    @property
    def replicas_identical(self) -> bool:
        """Whether every worker holds the same parameters and buffers right now."""
        return False

    def _average(self, flat: torch.Tensor) -> torch.Tensor:
        """The worker average of ``flat`` on every rank (non-worker ranks add nothing)."""
        out = flat.clone()
        if self.comm.size == 1 or not out.numel() or self.replicas_identical:
            return out
        if self.replicas == self.comm.size:     # with groups: equal in a group, so the mean
            return self._telemetry.allreduce(out, average=True)      # over groups
        if not self.is_worker:
            out.zero_()
        return self._telemetry.allreduce(out).div_(self.replicas)

    def _whole(self, block: torch.Tensor) -> torch.Tensor:
        """The full tensor of which ``block`` is this rank's block (with groups: the group's
        blocks assembled, uncounted), else ``block``."""
        return block if self.groups is None else self.groups.assemble(block)

    def close(self) -> None:
        """Free the MPI objects the algorithm made (a private Dup of ``comm``; a gossip
        graph communicator and its persistent requests). Collective; call it once, last:
        MPI allows only so many communicators per process (MPICH: about 2000).
        Receives still posted and unmatched (a run stopped at a rendezvous leaves a
        server's next receive) are cancelled first."""
        if self.comm.mpi != MPI.COMM_NULL:
            self.comm.cancel_receives()
        if self.private_comm and self.comm.mpi != MPI.COMM_NULL:
            self.comm.mpi.Free()
        if self.groups is not None:
            self.groups.free()
            self.groups = None

    # ---- checkpoints ---------------------------------------------------

    def state_dict(self) -> dict:
        """Everything a continuation needs on this rank, between two steps
        (:func:`~mpisgd.algorithms.rankstate.take`); subclasses add theirs to ``super()``'s.
        Lock-step algorithms take it at any step boundary; those with a centre rank
        inside :meth:`rendezvous`, where no message is in flight."""
        return rankstate.take(self)

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` (taken on this rank of an equal run)."""
        rankstate.restore(self, state)

    def stats(self) -> dict:
        """This rank's counters: steps, rounds, bytes sent, seconds in/blocked on communication
        (with groups, both levels summed), steps the gradient scaler skipped."""
        out = {"steps": self.steps, "rounds": self.rounds, **self.comm.counters(),
               "skipped_steps": self.scaler.skipped if self.scaler is not None else 0}
        for comm in self.groups.comms() if self.groups is not None else ():
            for k, v in comm.counters().items():
                out[k] += v
        return out

    def worker_series(self) -> dict:
        """This worker's figures for the run record, ``{"group/name": number}``."""
        out = self.timer.collected().series()
        if self.groups is not None:     # bytes per level: inside the group, across groups
            inside, across = (c.bytes_sent for c in self.groups.comms())
            out.update({"groups/inside_bytes": inside, "groups/across_bytes": across})
        if self.stragglers is not None:
            out.update({f"stragglers/{k}": v for k, v in self.stragglers.summary().items()})
        return out

    def series(self, train_time: float) -> dict:
        """What the algorithm adds to the run record, ``{"group/name": array}``, on rank 0.

        Collective (every rank calls it, after :meth:`finish`): rank 0 gets
        each worker's :meth:`worker_series` as arrays indexed by worker;
        ``train_time``: seconds of training (log points excluded).
        """
        mine = (self.replica_index, self.worker_series()) if self.is_worker else None
        gathered = self._telemetry.gather(mine, root=0)
        if gathered is None:
            return {}
        rows = sorted(g for g in gathered if g is not None)
        keys = sorted({k for _, row in rows for k in row})
        return {k: [row.get(k, 0) for _, row in rows] for k in keys}
