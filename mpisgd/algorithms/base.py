"""What every algorithm shares: options, flat storage, agreement, counters.

An :class:`Algorithm` wraps a model and its ``torch.optim`` optimizer
(composition, never a subclass of the optimizer). Construction, on every
rank, in this order:

1. resolve and validate the options (``ValueError`` naming the option, on
   every rank, before any communication; a rank that fails alone, say on a
   file the others can read, ends every rank with its message);
2. move parameters and gradients into one :class:`~mpisgd.flat.ParamBuffer`;
3. agree: one ``allgather`` of a digest of the algorithm, options,
   :meth:`agreement` (W), parameter shapes and optimizer settings; ranks
   that differ raise ``ValueError``;
4. broadcast rank 0's parameters and buffers, so all workers start equal.
"""
from __future__ import annotations

import sys
import time
import traceback
import warnings

import torch

from .._mpi import MPI

from .. import device as placement
from ..comm import Comm, check_reducible
from ..errors import agree, digest
from ..flat import ParamBuffer
from ..options import Option, resolve
from ..stragglers import Stragglers, parse_comm, parse_compute, wait

#: Options every algorithm accepts: injected delays (:mod:`mpisgd.stragglers`).
COMMON = (
    Option("straggler", None, "injected compute delay per step: exp:MEAN, shifted-exp:SHIFT,MEAN, "
           "pareto:SHAPE,SCALE, slow:W=FACTOR,... (joined by +)", str,
           check=lambda v: parse_compute(v) is not None or True),
    Option("comm_delay", None, "injected delay per communication round: SECONDS or exp:MEAN", str,
           check=lambda v: parse_comm(v) is not None or True),
    Option("straggler_seed", None, "seed of the injected delays (the CLI: --seed)", int,
           check=lambda v: v >= 0, must="a non-negative integer"),
)


class Algorithm:
    """Base of all algorithms: the public API of DESIGN.md.

    Subclasses set ``name`` and ``options`` and implement :meth:`step`.
    """

    name = ""
    options: tuple[Option, ...] = ()
    is_worker = True
    owns_momentum = False    # True: the algorithm applies its own momentum (the optimizer's is 0)
    private_comm = False     # True: communicate on a Dup of comm (point-to-point with ANY_SOURCE)
    collective_rounds = True  # rounds are collectives: every rank draws the same comm delay

    @classmethod
    def declared(cls) -> tuple[Option, ...]:
        """Every option the algorithm accepts: its own, then :data:`COMMON`."""
        return cls.options + COMMON

    @classmethod
    def worker_count(cls, size: int, opts: dict) -> int:
        """Workers among ``size`` ranks with resolved options ``opts``; ``ValueError`` if none."""
        return size

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 comm=None, device=None, **options):
        self.opts = resolve(self.name, self.declared(), options)
        comm = MPI.COMM_WORLD if comm is None else comm
        self.size, self.rank = comm.Get_size(), comm.Get_rank()   # local queries: no traffic
        self.optimizer = optimizer
        try:                 # a rank whose files differ must not leave the others waiting
            self.validate()
            if device is not None:
                device = placement.parse(device)
                placement.check_available(device)
        except ValueError as err:
            agree(comm, str(err))
        self.stragglers = None
        if self.opts["straggler"] or self.opts["comm_delay"]:
            delays = Stragglers(self.opts["straggler"], self.opts["comm_delay"],
                                self.opts["straggler_seed"] or 0, max(self.worker_index, 0),
                                shared_comm=self.collective_rounds)
            delays.check_workers(self.workers)
            self.stragglers = delays if self.is_worker else None
        self.model = model
        params = list(model.parameters())
        agree(comm, None, digest({
            "algorithm": self.name, "options": self.opts, **self.agreement(),
            "shapes": [list(p.shape) for p in params],
            "trainable": [p.requires_grad for p in params],
            "dtype": sorted({str(p.dtype) for p in params}),
            "device": device or sorted({p.device.type for p in params}),
            "optimizer": [type(optimizer).__name__] + [
                {k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups],
        }))
        #: Where this rank runs (``device=``: bound from the node-local rank; else ``None``:
        #: the model's device).
        self.placement = None
        failed = None
        try:         # a device or memory failure on one rank must not leave the others waiting
            if device is not None:
                self.placement = placement.bind(comm, device)
                placement.move(model, optimizer, self.placement.device)
            self.flat = ParamBuffer(model, self.bucket_bytes())
            check_reducible(self.flat.dtype)
        except Exception as err:        # noqa: BLE001 - every rank hears it, then raises
            if isinstance(err, ValueError):
                failed = str(err)
            else:                       # not a bad option: this rank shows where it came from
                failed = f"{type(err).__name__}: {err}"
                sys.stderr.write("".join(f"[rank {self.rank}] {line}\n"
                                         for line in traceback.format_exc().splitlines()))
        agree(comm, failed)
        self.comm = Comm(comm.Dup() if self.private_comm else comm)
        if self.flat.device.type == "cuda":   # a device buffer goes to MPI directly only if it works
            self.comm.verify_cuda_aware(self.flat.device)
        self._telemetry = self.comm.sibling()      # uncounted traffic, in the same posting order
        self.comm.bcast(self.flat.data, 0)
        if self.flat.buffers.numel():
            self.comm.bcast(self.flat.buffers, 0)
        self.steps = 0       # local optimizer steps taken
        self.rounds = 0      # communication rounds taken
        self.finished = False
        self._stepped = None  # when the last step() returned (the next step's compute starts)
        #: The clock schedules read: seconds of training, from the end of construction;
        #: the training driver sets its own, which starts at its start barrier and
        #: stops during log points.
        built = time.perf_counter()
        self.clock = lambda: time.perf_counter() - built
        self._loss_sum, self._loss_count = None, 0

    # ---- hooks for subclasses -----------------------------------------

    def validate(self) -> None:
        """Check option combinations (``self.opts`` resolved, ``self.size``,
        ``self.rank`` and ``self.optimizer`` set); raise ``ValueError``.

        It may read files: a rank that fails while others pass ends them
        all with its message (one ``allgather``, before any other traffic)."""

    def agreement(self) -> dict:
        """What else must be identical on every rank (e.g. a digest of W), checked
        with the options before any communication."""
        return {}

    def bucket_bytes(self) -> float | None:
        """Bucket size for the flat buffer (``None``: one bucket)."""
        return None

    @staticmethod
    def warn(message: str) -> None:
        warnings.warn(message, UserWarning, stacklevel=4)

    # ---- the public API ----------------------------------------------

    @property
    def device(self) -> torch.device:
        """The device of the model, its flat buffer and everything the algorithm keeps."""
        return self.flat.device

    @property
    def workers(self) -> int:
        """Number of worker replicas."""
        return self.worker_count(self.size, self.opts)

    @property
    def worker_index(self) -> int:
        """This rank's worker index (0 .. workers-1); data streams key on it."""
        return self.rank

    def step(self, loss=None) -> None:
        """The local optimizer step plus whatever communication the schedule says.

        ``loss``: this step's mini-batch loss (a number or a 0-d tensor, not
        synchronised here); schedules that adapt to it (AdaComm) read it,
        others ignore it. With an injected compute delay (``straggler``) the
        step first spends it, as if the gradient had taken that much longer
        (see :meth:`_cancellation`); subclasses implement :meth:`_step`.
        """
        if loss is not None:
            loss = loss.detach().double() if torch.is_tensor(loss) else float(loss)
            if self._loss_sum is None:
                self._loss_sum = self._loss_first = loss
            else:
                self._loss_sum = self._loss_sum + loss
            self._loss_count += 1
        if self.stragglers is not None:
            if self.flat.device.type == "cuda":   # the delay follows this step's kernels, as on
                torch.cuda.current_stream(self.flat.device).synchronize()   # a slower GPU
            now = time.perf_counter()
            compute = now - self._stepped if self._stepped is not None else 0.0
            wait(self.stragglers.compute(compute), self._cancellation())
        self._step()
        self._stepped = time.perf_counter()

    def _step(self) -> None:
        raise NotImplementedError

    def take_loss(self) -> tuple[float, int, float]:
        """The sum, count and first of the losses given to :meth:`step` since the last call."""
        if self._loss_sum is None:
            return 0.0, 0, 0.0
        out = float(self._loss_sum), self._loss_count, float(self._loss_first)
        self._loss_sum, self._loss_count = None, 0
        return out

    def _cancellation(self):
        """A cheap ``() -> bool`` that ends an injected compute delay early (the work is
        abandoned: the parameter server's cancellation), or ``None``."""
        return None

    def _round_delay(self) -> None:
        """Spend the injected delay of one communication round (``comm_delay``), if any."""
        if self.stragglers is not None:
            wait(self.stragglers.comm())

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
        return self._telemetry.allreduce(out).item() / self.workers

    def consensus_buffers(self) -> torch.Tensor:
        """The floating buffers (BatchNorm statistics) of the consensus model: the worker average."""
        return self._average(self.flat.buffers)

    @property
    def replicas_identical(self) -> bool:
        """Whether every worker holds the same parameters and buffers right now."""
        return False

    def _average(self, flat: torch.Tensor) -> torch.Tensor:
        """The worker average of ``flat`` on every rank (non-worker ranks add nothing)."""
        out = flat.clone()
        if self.comm.size == 1 or not out.numel() or self.replicas_identical:
            return out
        if self.workers == self.comm.size:
            return self._telemetry.allreduce(out, average=True)
        if not self.is_worker:
            out.zero_()
        return self._telemetry.allreduce(out).div_(self.workers)

    def close(self) -> None:
        """Free the MPI objects the algorithm made (a private Dup of ``comm``; a gossip
        graph communicator and its persistent requests). Collective; call it once, last:
        MPI allows only so many communicators per process (MPICH: about 2000)."""
        if self.private_comm and self.comm.comm != MPI.COMM_NULL:
            self.comm.comm.Free()

    def stats(self) -> dict:
        """This rank's counters: steps, rounds, bytes sent, seconds in/blocked on communication."""
        return {"steps": self.steps, "rounds": self.rounds, **self.comm.counters()}

    def worker_series(self) -> dict:
        """This worker's figures for the run record, ``{"group/name": number}``."""
        if self.stragglers is None:
            return {}
        return {f"stragglers/{k}": v for k, v in self.stragglers.summary().items()}

    def series(self, train_time: float) -> dict:
        """What the algorithm adds to the run record, ``{"group/name": array}``, on rank 0.

        Collective (every rank calls it, after :meth:`finish`): rank 0 gets
        each worker's :meth:`worker_series` as arrays indexed by worker;
        ``train_time``: seconds of training (log points excluded).
        """
        mine = (self.worker_index, self.worker_series()) if self.is_worker else None
        gathered = self._telemetry.comm.gather(mine, root=0)
        if gathered is None:
            return {}
        rows = sorted(g for g in gathered if g is not None)
        keys = sorted({k for _, row in rows for k in row})
        return {k: [row.get(k, 0) for _, row in rows] for k in keys}
