"""Decentralized gossip SGD (D-PSGD) and Cooperative SGD, A(tau, W, v).

Cooperative SGD (Wang & Joshi 2018) stacks the workers' models and v
auxiliary variables, X = [x_1 .. x_m, z_1 .. z_v], and after each local
step mixes them every tau steps: X_{k+1} = (X_k - eta G_k) W_k, G_k zero in
the auxiliary columns. In the row convention of :mod:`mpisgd.topology`
(W_k[i, j] != 0: node i listens to node j) a round is

    x_i <- sum_{j <= m} W[i, j] x_j + sum_a W[i, m+a] z_a        (worker i)
    z_a <- sum_{j <= m} W[m+a, j] x_j + sum_b W[m+a, m+b] z_b    (auxiliary a)

* ``gossip`` (D-PSGD, Lian et al. 2017): v = 0 and W a sparse doubly
  stochastic matrix of a graph (ring, torus, exponential, ..., a file), or a
  time-varying one (one-peer exponential, MATCHA random matchings). The
  workers' exchange runs on an MPI dist-graph communicator built from W's
  sparsity (:class:`mpisgd.mixing.Mixer`): each worker talks only to its
  neighbours.
* ``cooperative``: any symmetric doubly stochastic W over m workers and v
  auxiliary variables. **Where the auxiliary variables live:** replicated
  on every worker; a round adds one ``Iallreduce`` of the v weighted
  contributions W[m+a, i] x_i (v x d values), overlapped with the workers'
  neighbour exchange, after which every worker updates every z_a alike.
  Special cases (the tests check each): ``sync`` = A(1, 11^T/m, 0) (topology
  complete), ``local`` = A(tau, 11^T/m, 0), D-PSGD = A(1, W, 0) (``gossip``),
  EASGD = A(tau, W_alpha, 1) (topology ``easgd``, ``alpha``).

``overlap=True`` hides the exchange behind the next step's computation.
The round that the schedule calls at local step s sends a snapshot of the
unmixed x_s and is applied in step s + 1, whose gradient was taken at x_s:

    x_i,s+1 = sum_j W[i, j] x_j,s - eta g_i(x_i,s)

(D-PSGD's own order, and the "simultaneous" order of
:func:`mpisgd.reference.cooperative`, with each round one step later than
without overlap). :meth:`finish` applies a round still pending. The cost:
one more copy of the model (the snapshot).

Both are presets: a :class:`~mpisgd.algorithms.rounds.Mix` round under a
schedule (:class:`~mpisgd.algorithms.scheduled.Scheduled`).

The output (:meth:`consensus`) is u = (sum_i x_i + sum_a z_a) / (m + v),
the average of all columns, which doubly stochastic mixing preserves
(Wang & Joshi analyse it); for v = 0 the workers' average.

Example::

    algo = mpisgd.build("gossip", model, opt, topology="exponential", tau=1)
    for x, y in loader:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        algo.step(loss)
    algo.finish()
    theta = algo.consensus()
"""
from __future__ import annotations

import hashlib

import torch

from .. import topology as topologies
from ..errors import OptionError
from ..topology.spectral import is_averaging
from .options import AUX, ELASTIC, GOSSIP, GROUPS, OUTER, OVERLAP, SCHEDULE, TAU, TOPOLOGY
from .rounds import Mix
from .scheduled import Scheduled
from .traits import Traits

#: Rounds of a random time-varying topology whose W_k every rank must agree on.
AGREED_ROUNDS = 4


class Gossip(Scheduled):
    """D-PSGD: local steps, and every tau steps x_i <- sum_j W[i, j] x_j with neighbours.

    Options:
        tau and the schedule options (default tau 1: D-PSGD mixes every step).
        topology: a graph name, ``one-peer-exponential``, or a W file (default ``ring``).
        weights: ``metropolis`` or ``uniform``; graph_p, matcha, topology_seed.
        overlap: the exchange hidden behind the next step (see the module).
        exchange: ``auto``, ``neighbor``, ``persistent`` or ``allreduce``.
    """

    name = "gossip"
    options = (TAU, *SCHEDULE, TOPOLOGY, *GOSSIP, OVERLAP, *OUTER, *GROUPS)
    symmetric = False          # D-PSGD needs W doubly stochastic, not symmetric

    @classmethod
    def traits(cls, opts=None) -> Traits:
        return Traits("gossip", periodic=True)
    aux_allowed = False

    @classmethod
    def check(cls, opts: dict) -> None:
        super().check(opts)
        varying = opts["topology"] == "one-peer-exponential" or opts["matcha"] is not None
        if opts["exchange"] == "neighbor" and varying:
            raise OptionError("exchange", f"neighbor needs a static W; topology {opts['topology']}"
                              f"{' with matcha' if opts['matcha'] is not None else ''} changes "
                              "every round: use persistent")

    def validate(self) -> None:
        o = self.opts
        self.topology = topologies.build(         # its errors name the topology or the file
            o["topology"], self.workers + self.aux_count(), weights=o["weights"],
            p=o["graph_p"], matcha=o["matcha"], seed=o["topology_seed"] or 0, **self.elastic())
        n, m = self.topology.n, self.workers
        if n < m or (n > m and not self.aux_allowed):
            per = "rank" if self.group_size == 1 else f"group of {self.group_size} ranks"
            raise OptionError("topology", f"{o['topology']} has {n} nodes but the job has {m} "
                              f"workers (one per {per}"
                              f"{'' if self.aux_allowed else ', no auxiliary variables'})")
        if self.symmetric and not self.topology.symmetric:
            raise OptionError("topology", f"{o['topology']} is not symmetric; {self.name} needs "
                              "a symmetric W (Cooperative SGD), use --algo gossip")
        if self.symmetric and not self.topology.time_varying:
            topologies.validate(self.topology.matrix(0), symmetric=True)
        if o["exchange"] == "allreduce" and (self.topology.time_varying or n > m or not
                                             is_averaging(self.topology.matrix(0))):
            raise OptionError("exchange", "allreduce needs W = 11^T/m over the workers "
                              "(topology complete); use neighbor")

    def aux_count(self) -> int:
        return 0

    def elastic(self) -> dict:
        return {}

    def agreement(self) -> dict:
        """W itself (its first rounds' matrices), so a file that differs between ranks is caught."""
        t = self.topology
        rounds = (t.period or AGREED_ROUNDS) if t.time_varying else 1
        h = hashlib.sha256()
        for k in range(rounds):
            h.update(t.matrix(k).contiguous().numpy().tobytes())
        return {"W": h.hexdigest()[:16]}

    def make_round(self) -> Mix:
        return Mix(self.peers, self.topology, self.x, self.opts["exchange"],
                   snapshot=self.opts["overlap"])

    @property
    def mixer(self):
        return self.round.mixer

    @property
    def v(self) -> int:
        """The number of auxiliary variables."""
        return self.round.v

    @property
    def aux(self) -> torch.Tensor:
        """The auxiliary variables z_a (v x d, replicated on every worker; with groups, each
        rank's block of them)."""
        return self.round.aux

    # ---- output and telemetry ------------------------------------------

    def consensus(self) -> torch.Tensor:
        """u = (sum_i x_i + sum_a z_a) / (m + v), the same on every rank."""
        mean = self._average(self.flat.data)
        if not self.v:
            return mean
        m = self.workers
        return mean.mul_(m).add_(self._whole(self.aux.sum(0))).div_(m + self.v)

    def worker_series(self) -> dict:
        out = super().worker_series()
        indeg, outdeg = self.mixer.degree
        out.update({"gossip/in_degree": indeg, "gossip/out_degree": outdeg,
                    "gossip/bytes_per_round": self.mixer.bytes_per_round})
        return out

    def series(self, train_time: float) -> dict:
        out = super().series(train_time)
        if self.rank == 0:
            out["gossip/zeta"] = [self.topology.zeta]
        return out


class Cooperative(Gossip):
    """A(tau, W, v): any symmetric doubly stochastic W over m workers and v auxiliary variables.

    Options (besides :class:`Gossip`'s; default topology ``complete``, so A(tau, J, 0)):
        aux: v, the number of auxiliary variables: the last v nodes of the topology
            (a W file of m + v rows); topology ``easgd`` has one.
        alpha, beta: W_alpha's moving rate for topology ``easgd`` (default beta / m).
    """

    name = "cooperative"
    options = (TAU, *SCHEDULE, TOPOLOGY.but(default="complete"), *GOSSIP, OVERLAP, AUX, *ELASTIC,
               *OUTER, *GROUPS)
    symmetric = True
    aux_allowed = True

    @classmethod
    def check(cls, opts: dict) -> None:
        super().check(opts)
        if opts["topology"] == "easgd" and opts["aux"] not in (0, 1):
            raise OptionError("aux", f"must be 1 with topology easgd (W_alpha has one centre), "
                              f"got {opts['aux']}")

    def aux_count(self) -> int:
        return 0 if self.opts["topology"] == "easgd" else self.opts["aux"]   # easgd adds the centre

    def elastic(self) -> dict:
        return {"alpha": self.opts["alpha"], "beta": self.opts["beta"]}
