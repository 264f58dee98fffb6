"""Asynchronous algorithms around a centre rank: async EASGD, EAMSGD, DOWNPOUR.

Each worker runs on its own clock t_i and, in every tau-th of its own steps,
exchanges with a centre variable c held by rank 0 (the protocol of
:mod:`mpisgd.server.protocol`: nonblocking Isend/Irecv, served in arrival order):

* ``async-easgd`` (Zhang et al. 2015, Algorithm 1), at the x_i where this
  step's gradient was taken: read c; e = alpha (x_i - c); x_i -= e;
  c += e at the centre; then x_i -= eta g_i(x_i) (the optimizer's step).
* ``eamsgd`` (Algorithm 2): the same elastic round with local Nesterov
  momentum delta instead of the optimizer's step,
  v_i <- delta v_i - eta g_i(x_i + delta v_i);  x_i <- x_i + v_i.
  Both steps start from the iteration's copy x_i (the gradient at the
  pre-elastic x_i + delta v_i). The model holds the look-ahead point
  y_i = x_i + delta v_i (where the gradient is taken, as torch's Nesterov
  SGD does), and the elastic and momentum steps run as one fused pass
  (:func:`mpisgd.ops.eamsgd_step`); with delta = 0 it is async-easgd.
  The optimizer (``torch.optim.SGD``, momentum 0) provides only the
  learning rate and weight decay.
* ``downpour`` (the paper's comparator; async SGD when tau = 1): the worker
  pushes the sum of its last tau local steps, c += x_i - x_i(last pull),
  and pulls x_i <- c, in one message pair.

``center="dedicated"`` (default): ranks ``0..S-1`` only serve (call
:meth:`serve`; ``servers=S``, default 1, each holding a contiguous 1/S slice
of c, exchanged with every worker concurrently), the others are workers
0... ``center="rank0"``: rank 0 holds all of c, trains too and serves the
messages that have arrived between its own steps, never blocking on them;
its own exchanges touch c directly. Either way :meth:`consensus` is c.

The update rules live here; the centre (:mod:`mpisgd.server.center`) only
reads c and adds to it. "Every tau-th step" is a :class:`mpisgd.schedule.Periodic`
on each worker's own clock.

Example (every rank runs it)::

    algo = mpisgd.build("async-easgd", model, opt, tau=4)
    if not algo.is_worker:
        algo.serve()                 # returns when every worker has finished
    else:
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            algo.step()
        algo.finish()
    theta = algo.consensus()         # the centre variable, on every rank
"""
from __future__ import annotations

import torch

from .. import ops
from ..errors import OptionError
from ..schedule import Periodic
from ..server.center import CenterClient, CenterServer, LocalCenter
from ..server.params import PROTOCOLS
from . import outer
from .easgd import checked_moving_rate
from .options import CENTER, DELTA, ELASTIC, GROUP_SIZE, OUTER, SERVERS, TAU
from .served import Served
from .traits import Traits

DEDICATED = CENTER.but(default="dedicated", choices=("dedicated", "rank0"))


class CenterAlgorithm(Served):
    """The centre on server ranks (or rank 0, training too); subclasses define :meth:`local_step`."""

    options = (TAU, DEDICATED, SERVERS, *OUTER, GROUP_SIZE)
    group = "center"

    @classmethod
    def traits(cls, opts=None) -> Traits:
        """Each push (every tau steps) answered at once: K-batch-async's rules, K = 1."""
        return Traits("server", periodic=True, protocol=PROTOCOLS["k-batch-async"])

    @classmethod
    def server_ranks(cls, opts: dict) -> int:
        return opts["servers"] if opts["center"] == "dedicated" else 0

    @classmethod
    def asking(cls, problem: str) -> ValueError:
        return OptionError("center", f"dedicated{problem}")

    @classmethod
    def check(cls, opts: dict) -> None:
        if opts["center"] != "dedicated" and opts["servers"] != 1:
            raise OptionError("servers", f"{opts['servers']} needs center dedicated (with "
                              "center rank0 rank 0 holds the whole centre and trains too)")

    @property
    def dedicated(self) -> bool:
        return self.opts["center"] == "dedicated"

    def __init__(self, model, optimizer, comm=None, **options):
        super().__init__(model, optimizer, comm, **options)
        self.schedule = Periodic(self.opts["tau"])       # on this worker's own clock
        if self.rank < self.shards.servers:
            mine = self.shards.slice(self.flat.data, self.rank)
            center = mine if self.dedicated else mine.clone()
            self.server = CenterServer(self.comm, center, self.remote, self.index,
                                       outer.make(self.opts, center, anchor=center))
        if not self.leader:
            self.center = None
        elif self.server is not None:
            self.center = LocalCenter(self.server)
        else:
            self.center = CenterClient(self.comm, self.shards, self.flat.data)
        self.client = self.center
        self._diff = torch.empty_like(self.flat.data)

    @property
    def period(self) -> int:
        return self.schedule.tau

    #: Tensors of the algorithm's own besides x (EAMSGD's velocity, DOWNPOUR's anchor).
    tensors: tuple[str, ...] = ()

    def state_dict(self) -> dict:
        step = self.server.outer if self.server is not None else None
        return {**super().state_dict(), "schedule": self.schedule.state_dict(),
                "outer": step.state_dict() if step is not None else None,
                **{name: getattr(self, name) for name in self.tensors}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.schedule.load_state_dict(state["schedule"])
        if state["outer"] is not None:
            self.server.outer.load_state_dict(state["outer"])
        for name in self.tensors:
            getattr(self, name).copy_(state[name])

    def shared(self) -> torch.Tensor:
        return self.server.center

    def _step(self) -> int:
        """One local step; in every tau-th an exchange with the centre."""
        if self._following():           # the leader's parameters arrive after the step
            if self.scaler is not None:  # the group's mean gradient: the leader's skip and scale
                self._optimizer_step()
            return 0
        self.center.progress()
        exchange = self.schedule.communicate(self.steps)
        if exchange:
            self._round_delay()
        self.local_step(exchange)
        return int(exchange)

    def local_step(self, exchange: bool) -> None:
        raise NotImplementedError


class AsyncEASGD(CenterAlgorithm):
    """Asynchronous EASGD (Algorithm 1): elastic exchange, then the optimizer's step."""

    name = "async-easgd"
    options = (TAU, *ELASTIC, DEDICATED, SERVERS, *OUTER, GROUP_SIZE)

    def __init__(self, model, optimizer, comm=None, **options):
        super().__init__(model, optimizer, comm, **options)
        self.alpha = checked_moving_rate(self, all_in_round=False)

    def elastic(self) -> None:
        """Read c; e = alpha (x - c); x -= e; c += e at the centre.

        ``e`` may still be in flight from the previous round until the PULL
        is sent (sends complete in order), so it is written only after."""
        c = self.center.pull()
        ops.elastic(self.flat.data, c, self._diff, self.alpha)
        self.center.push(self._diff)

    def local_step(self, exchange: bool) -> None:
        if exchange:
            self.elastic()
        self._optimizer_step()


class EAMSGD(AsyncEASGD):
    """EAMSGD (Algorithm 2): async EASGD with local Nesterov momentum ``delta``."""

    name = "eamsgd"
    unscalable = ("its update reads the gradients itself (the fused EAMSGD step), outside "
                  "the optimizer a gradient scaler steps")
    tensors = ("velocity",)
    owns_momentum = True        # its momentum is delta
    options = AsyncEASGD.options + (DELTA,)

    def validate(self):
        super().validate()
        if not isinstance(self.optimizer, torch.optim.SGD):
            raise ValueError(f"eamsgd steps the parameters itself with the optimizer's learning rate: "
                             f"give it torch.optim.SGD, not {type(self.optimizer).__name__}")
        groups = self.optimizer.param_groups
        if any(g.get("momentum", 0) or g.get("nesterov") for g in groups):
            raise ValueError("eamsgd applies its own Nesterov momentum (delta): give the optimizer "
                             "momentum=0 (the CLI does)")
        if any(g.get("dampening", 0) or g.get("maximize") for g in groups):
            raise ValueError("eamsgd does not apply the optimizer's dampening or maximize")
        if len({(g["lr"], g.get("weight_decay", 0)) for g in groups}) > 1:
            raise ValueError("eamsgd needs one learning rate and weight decay for all parameters")

    def __init__(self, model, optimizer, comm=None, **options):
        super().__init__(model, optimizer, comm, **options)
        self.velocity = torch.zeros_like(self.flat.data)
        self._trainable = torch.cat([torch.full((p.numel(),), float(t), dtype=self.flat.dtype,
                                                device=self.flat.device)
                                     for p, t in zip(self.flat.params, self.flat.trainable)])

    def local_step(self, exchange: bool) -> None:
        """From the copy x = y - delta v: when due, e = alpha (x - c); and
        v <- delta v - eta g(y); y <- x - e + v + delta v, in one pass."""
        group = self.optimizer.param_groups[0]
        y, g = self.flat.data, self.flat.flat_grad()
        if group.get("weight_decay", 0):       # frozen parameters decay no more than in SGD
            g = g.addcmul(y, self._trainable, value=group["weight_decay"])
        args = (y, self.velocity, g, group["lr"], self.opts["delta"])
        if not exchange:
            ops.eamsgd_step(*args)
            return
        c = self.center.pull()
        ops.eamsgd_step(*args, c, self._diff, self.alpha)
        self.center.push(self._diff)


class Downpour(CenterAlgorithm):
    """DOWNPOUR: push the accumulated local steps, pull the centre (tau = 1: async SGD)."""

    name = "downpour"
    tensors = ("anchor",)

    def __init__(self, model, optimizer, comm=None, **options):
        super().__init__(model, optimizer, comm, **options)
        self.anchor = self.flat.data.clone()     # x_i at the last pull

    def local_step(self, exchange: bool) -> None:
        self._optimizer_step()
        if exchange:
            torch.sub(self.flat.data, self.anchor, out=self._diff)
            c = self.center.push_pull(self._diff)
            self.flat.data.copy_(c)
            self.anchor.copy_(c)
