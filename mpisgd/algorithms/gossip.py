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

from .. import schedule, topology as topologies
from ..mixing import EXCHANGES, Mixer, is_averaging
from ..options import Option
from ..staging import upload
from .elastic import elastic_options
from .scheduled import Scheduled


def gossip_options(default_topology: str) -> tuple[Option, ...]:
    """The options of the gossip family (topology and how rounds run)."""
    return schedule.options(1, "gossip, cooperative") + (
        Option("topology", default_topology, "the graph or W: " + ", ".join(topologies.TOPOLOGIES)
               + ", easgd (cooperative), or a .npy/.csv/edge-list file (gossip, cooperative)", str),
        Option("weights", "metropolis", "mixing weights of a graph (gossip, cooperative)", str,
               choices=topologies.WEIGHTS),
        Option("graph_p", None, "erdos-renyi: edge probability (default 2 ln n / n)", float,
               check=lambda v: 0 < v <= 1, must="in (0, 1]"),
        Option("matcha", None, "MATCHA: turn the graph into random matchings, each active "
               "with this probability per round", float, check=lambda v: 0 < v <= 1, must="in (0, 1]"),
        Option("topology_seed", None, "seed of random graphs and matchings (the CLI: --seed)", int,
               check=lambda v: v >= 0, must="a non-negative integer"),
        Option("overlap", False, "overlap each round's exchange with the next local step "
               "(gossip, cooperative)", bool),
        Option("exchange", "auto", "how neighbours exchange: auto, neighbor (collective), "
               "persistent (requests) or allreduce (W = 11^T/m)", str, choices=EXCHANGES),
    )


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
    options = gossip_options("ring")
    symmetric = False          # D-PSGD needs W doubly stochastic, not symmetric

    def validate(self) -> None:
        super().validate()
        o = self.opts
        self.topology = topologies.build(
            o["topology"], self.size + self.aux_count(), weights=o["weights"], p=o["graph_p"],
            matcha=o["matcha"], seed=o["topology_seed"] or 0, **self.elastic())
        n, m = self.topology.n, self.size
        if n < m or (n > m and not self.aux_allowed):
            raise ValueError(f"topology {o['topology']} has {n} nodes but the job has {m} ranks "
                             f"(one worker per rank{'' if self.aux_allowed else ', no auxiliary variables'})")
        if self.symmetric and not self.topology.symmetric:
            raise ValueError(f"topology {o['topology']} is not symmetric; {self.name} needs a "
                             "symmetric W (Cooperative SGD), use --algo gossip")
        if self.symmetric and not self.topology.time_varying:
            topologies.validate(self.topology.matrix(0), symmetric=True)
        if o["exchange"] == "neighbor" and self.topology.time_varying:
            raise ValueError(f"exchange neighbor needs a static W; topology {o['topology']} "
                             "changes every round: use persistent")
        if o["exchange"] == "allreduce" and (self.topology.time_varying or n > m or not
                                             is_averaging(self.topology.matrix(0))):
            raise ValueError("exchange allreduce needs W = 11^T/m over the workers "
                             "(topology complete); use neighbor")

    aux_allowed = False

    def aux_count(self) -> int:
        return 0

    def elastic(self) -> dict:
        return {}

    def agreement(self) -> dict:
        """W itself (its first rounds' matrices), so a file that differs between ranks is caught."""
        t = self.topology
        rounds = (t.period or 4) if t.time_varying else 1
        h = hashlib.sha256()
        for k in range(rounds):
            h.update(t.matrix(k).contiguous().numpy().tobytes())
        return {"W": h.hexdigest()[:16]}

    def __init__(self, model, optimizer, comm=None, **options):
        super().__init__(model, optimizer, comm, **options)
        self.v = self.topology.n - self.size
        self.mixer = Mixer(self.comm, self.topology, self.flat.data, self.opts["exchange"],
                           snapshot=self.opts["overlap"])
        d = self.flat.data.numel()
        self.aux = self.flat.data.expand(self.v, d).clone()         # z_a = x_0, replicated
        self._contrib = torch.empty_like(self.aux)
        self._pending = None      # the round in flight: (mixer handle, auxiliary handle or None)

    # ---- rounds ---------------------------------------------------------

    def _local_step(self) -> None:
        self.optimizer.step()
        self._complete()

    def _round_step(self) -> None:
        """The local step, then this round's mixing (overlap: posted, applied next step)."""
        self.optimizer.step()
        self._complete()
        self._round_delay()
        self._pending = self._post(self.rounds)
        self.rounds += 1
        if not self.opts["overlap"]:
            self._complete()

    def _post(self, k: int):
        """Start round k: the neighbour exchange and, with v > 0, the auxiliary contributions."""
        handle = self.mixer.start(k)
        aux = None
        if self.v:
            W = self.topology.matrix(k).to(self.flat.dtype)
            sent = self.mixer.send
            m, i = self.size, self.rank
            torch.mul(upload(W[m:, i], sent.device)[:, None], sent[None, :], out=self._contrib)
            aux = self.comm.iallreduce(self._contrib)
            self._aux_weights = upload(W[i, m:], sent.device), upload(W[m:, m:], sent.device)
        return handle, aux

    def _complete(self) -> None:
        """Apply the round in flight, if any."""
        if self._pending is None:
            return
        handle, aux = self._pending
        self._pending = None
        self.mixer.finish(handle)
        if aux is not None:
            to_worker, among = self._aux_weights
            self.flat.data.addmv_(self.aux.t(), to_worker)           # + sum_a W[i, m+a] z_a (old z)
            aux.wait()
            self.aux.copy_(torch.addmm(self._contrib, among, self.aux))   # z <- C + W_zz z

    def finish(self) -> None:
        """Apply a round still in flight (overlap); afterwards :meth:`consensus` is final."""
        self._complete()
        super().finish()

    def close(self) -> None:
        self._complete()
        self.mixer.close()
        super().close()

    # ---- output and telemetry ------------------------------------------

    def consensus(self) -> torch.Tensor:
        """u = (sum_i x_i + sum_a z_a) / (m + v), the same on every rank."""
        mean = self._average(self.flat.data)
        if not self.v:
            return mean
        return mean.mul_(self.size).add_(self.aux.sum(0)).div_(self.size + self.v)

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
    options = gossip_options("complete") + (
        Option("aux", 0, "cooperative: auxiliary variables v, the last v nodes of W", int,
               check=lambda v: v >= 0, must="a non-negative integer"),
    ) + elastic_options("")[1:]
    symmetric = True
    aux_allowed = True

    def aux_count(self) -> int:
        if self.opts["topology"] == "easgd":
            if self.opts["aux"] not in (0, 1):
                raise ValueError(f"aux must be 1 with topology easgd (W_alpha has one centre), "
                                 f"got {self.opts['aux']}")
            return 0        # build("easgd", m) adds the centre
        return self.opts["aux"]

    def elastic(self) -> dict:
        return {"alpha": self.opts["alpha"], "beta": self.opts["beta"]}
