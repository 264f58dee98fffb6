"""Parameter-server SGD: ``ps-sync``, ``async``, ``k-sync``, ``k-async``, ``k-batch-sync``,
``k-batch-async`` (Dutta, Joshi et al., AISTATS 2018).

Ranks ``0..S-1`` are the servers (``servers=S``, default 1; each holds a
contiguous 1/S slice of the parameters), the others are workers. A worker's
step: its gradient (taken by the caller's backward) goes to every server,
tagged with the version of the parameters it was computed at; the servers
update as :mod:`mpisgd.server.params` describes and send parameters back. The
worker's optimizer is not stepped on the workers: the servers run a copy of
it (class and settings) on their slices.

In ``k-sync`` and ``k-batch-sync`` a worker's work is cancelled when a newer
version arrives: an injected compute delay (``straggler``) ends at once, and
a gradient not yet sent is dropped — the worker moves on to the new version
(counted in ``/workers/abandoned``). A gradient already on the wire arrives
stale and the server drops it by version. (The forward and backward pass
themselves are not interrupted: torch offers no way to.)

Example (every rank runs it)::

    algo = mpisgd.build("k-sync", model, opt, k=3)
    if not algo.is_worker:
        algo.serve()
    else:
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            algo.step()
        algo.finish()
    theta = algo.consensus()      # the servers' parameters, on every rank
"""
from __future__ import annotations

import torch

from ..errors import OptionError
from ..server.params import PROTOCOLS, ParameterClient, ParameterServer
from .options import GROUP_SIZE, K, SERVERS, STALENESS_LR, parse_staleness_lr
from .served import Served
from .traits import Traits


class ParameterServerSGD(Served):
    """The family's common worker step; subclasses set :attr:`protocol`
    (a :class:`~mpisgd.server.params.Protocol`)."""

    unscalable = ("the server steps the model with its own optimizer, so a worker's gradient "
                  "scaler cannot skip a step")

    protocol = PROTOCOLS["k-sync"]

    @classmethod
    def traits(cls, opts=None) -> Traits:
        return Traits("server", protocol=cls.protocol, k_all=cls.k_all)
    k_all = True             # K when not given: every worker (else 1)
    options = (K, STALENESS_LR, SERVERS, GROUP_SIZE)

    def k_for(self, workers: int) -> int:
        """K: the option, else all workers or 1 (:attr:`k_all`)."""
        k = self.opts.get("k")
        return k if k is not None else (workers if self.k_all else 1)

    @classmethod
    def check(cls, opts: dict) -> None:
        if opts.get("staleness_lr") is not None and opts["servers"] > 1:
            raise OptionError("staleness_lr", "needs the whole ||w - w_tau||^2 on one server: "
                              "use it with servers 1")

    @classmethod
    def worker_count(cls, size: int, opts: dict, node_ranks: int | None = None) -> int:
        """The workers, and K at most that many where the server waits for K distinct ones
        (checked with the rank count, before MPI: a study's grid is refused up front)."""
        workers = super().worker_count(size, opts)
        k = opts.get("k")
        if cls.protocol.distinct_workers and k is not None and k > workers:
            raise OptionError("k", f"must be at most the number of workers ({workers}) for "
                              f"{cls.name}: the server waits for K distinct workers, got {k}")
        return workers

    def validate(self):
        super().validate()             # worker_count: the ranks and K
        groups = [{key: v for key, v in g.items() if key != "params"}
                  for g in self.optimizer.param_groups]
        if any(g != groups[0] for g in groups):
            raise ValueError(f"{self.name}: the servers run one copy of the optimizer; give "
                             "every parameter group the same settings")
        if not isinstance(self.optimizer, torch.optim.Optimizer):
            raise ValueError(f"{self.name}: the servers run a copy of the optimizer: give a "
                             f"torch.optim optimizer, not {type(self.optimizer).__name__}")
        if isinstance(self.optimizer, torch.optim.LBFGS):
            raise ValueError(f"{self.name}: the servers step element-wise optimizers "
                             "(SGD, Adam, ...), not LBFGS")

    def __init__(self, model, optimizer, comm=None, **options):
        super().__init__(model, optimizer, comm, **options)
        self.k = self.k_for(self.workers)
        if self.server is None and self.rank < self.shards.servers:
            rate = self.opts.get("staleness_lr")
            self.server = ParameterServer(
                self.comm, self.shards.slice(self.flat.data, self.rank), optimizer,
                self.protocol, self.k, self.remote, self.index,
                parse_staleness_lr(rate) if rate is not None else None)
        if self.leader:
            self.client = ParameterClient(self.comm, self.shards, self.flat.data)
        self.abandoned = 0       # computations cancelled by a newer version

    def state_dict(self) -> dict:
        return {**super().state_dict(), "abandoned": self.abandoned}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.abandoned = state["abandoned"]

    def shared(self) -> torch.Tensor:
        return self.server.w

    def _cancellation(self):
        return self.client.arrived if self.protocol.drop_stale and self.client is not None \
            else None

    def leader_figure(self) -> float:
        return float(self.abandoned)

    def follow_figure(self, value: float) -> None:
        self.abandoned = int(value)

    def _step(self) -> int:
        """Push this step's gradient (unless a newer version cancelled it) and adopt
        the parameters the protocol sends back."""
        if self._following():           # the leader's parameters arrive after the step
            return 0
        client, protocol = self.client, self.protocol
        if protocol.drop_stale and client.adopt(wait=False):
            self.abandoned += 1         # computed at a version that is gone: drop it
            return 0
        self._round_delay()
        client.push(self.flat.flat_grad())
        if protocol.drop_stale:         # k-sync: wait for the next version (it cancels the
            client.adopt(wait=protocol.wait_version)   # slower workers); else go on at this one
        else:
            client.reply()
        client.settle()                 # the gradient buffer is the next backward's
        return 1

    def worker_series(self) -> dict:
        return {**super().worker_series(), "workers/abandoned": self.abandoned}


class PSSync(ParameterServerSGD):
    """Fully synchronous parameter server: every worker's gradient at w_j (k-sync, K = P)."""

    name, protocol = "ps-sync", PROTOCOLS["k-sync"]
    options = (SERVERS, GROUP_SIZE)


class Async(ParameterServerSGD):
    """Asynchronous SGD: every gradient updates w at once, stale ones too (K = 1)."""

    name, protocol, k_all = "async", PROTOCOLS["k-batch-async"], False
    options = (STALENESS_LR, SERVERS, GROUP_SIZE)


class KSync(ParameterServerSGD):
    """The first K workers' gradients at w_j; the others are cancelled."""

    name, protocol = "k-sync", PROTOCOLS["k-sync"]
    options = (K, SERVERS, GROUP_SIZE)


class KAsync(ParameterServerSGD):
    """The first K distinct workers' gradients, stale ones too; no cancelling."""

    name, protocol = "k-async", PROTOCOLS["k-async"]


class KBatchSync(ParameterServerSGD):
    """Any K gradients at w_j (a fast worker may give several); the rest cancelled."""

    name, protocol, k_all = "k-batch-sync", PROTOCOLS["k-batch-sync"], False
    options = (K, SERVERS, GROUP_SIZE)


class KBatchAsync(ParameterServerSGD):
    """Any K gradients, stale ones too; each push is answered at once with the current w."""

    name, protocol, k_all = "k-batch-async", PROTOCOLS["k-batch-async"], False


FAMILY = (PSSync, Async, KSync, KAsync, KBatchSync, KBatchAsync)
