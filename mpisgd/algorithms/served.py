"""Algorithms whose shared variable lives on server ranks: roles, rendezvous, shutdown.

Ranks ``0..S-1`` are servers (``servers=S``), each holding the contiguous
slice ``s`` of the shared flat vector (:class:`~mpisgd.server.protocol.Shards`); the
other ranks are workers ``0..P-1`` (worker ``i`` is rank ``S + i``). Servers
call :meth:`serve`, workers :meth:`step` and :meth:`finish`. The shared
vector — the centre of asynchronous EASGD, the parameters of a parameter
server — is what :meth:`consensus` returns, assembled from the slices.

Subclasses build :attr:`server` (a :class:`~mpisgd.server.protocol.Server`, on server
ranks) and :attr:`client` (on workers, with ``sync()`` and ``done()``).

With groups (``group_size`` G) the worker ranks form groups of G consecutive
ranks, each a worker: the group averages its gradients every step, its
leader (local index 0) alone speaks the protocol with the servers, and
broadcasts the parameters (and its counters) to the group after every step.
The servers' links carry every worker's full model whatever the group does,
so splitting the exchange over the group's ranks would save the servers
nothing: the leader speaks for it.
"""
from __future__ import annotations

import torch

from .. import groups
from ..server.protocol import Shards
from .base import Algorithm


class Served(Algorithm):
    """Roles, rendezvous, shutdown and consensus around ``S`` server ranks."""

    private_comm = True      # servers receive from any source with any tag: keep user traffic out
    collective_rounds = False
    group = "server"         # the run record's group for the servers' figures

    @classmethod
    def server_ranks(cls, opts: dict) -> int:
        """Ranks that only serve (``0..S-1``)."""
        return opts["servers"]

    @classmethod
    def worker_count(cls, size: int, opts: dict, node_ranks: int | None = None) -> int:
        servers = cls.server_ranks(opts)
        if size <= servers:
            serving = "rank 0 serves" if servers == 1 else f"ranks 0..{servers - 1} serve"
            raise cls.too_few(opts, f"needs at least {servers + 1} ranks ({serving}, the others "
                                    f"are workers), got {size}")
        return groups.check(size - servers, groups.size_of(opts.get("group_size", 1), node_ranks),
                            what=f"worker ranks (ranks {servers}..{size - 1})")

    @classmethod
    def too_few(cls, opts: dict, problem: str) -> ValueError:
        """The error for too few ranks, naming what asks for the server ranks."""
        servers = f" with servers {opts['servers']}" if opts["servers"] > 1 else ""
        return cls.asking(f"{servers} {problem}")

    @classmethod
    def asking(cls, problem: str) -> ValueError:
        """An error about what asks for the server ranks: here, the algorithm."""
        return ValueError(f"algorithm {cls.name}{problem}")

    def validate(self):
        self.worker_count(self.size, self.opts)

    @property
    def is_worker(self) -> bool:
        return self.rank >= self.server_ranks(self.opts)

    @property
    def worker_index(self) -> int:
        return (self.rank - self.server_ranks(self.opts)) // self.group_size

    @property
    def replica_index(self) -> int:
        return self.rank - self.server_ranks(self.opts)

    def group_first(self) -> int:
        return self.server_ranks(self.opts)

    @property
    def leader(self) -> bool:
        """Whether this rank speaks the protocol (every worker; with groups, the first rank
        of each)."""
        return self.is_worker and (self.groups is None or self.groups.leader)

    def __init__(self, model, optimizer, comm=None, **options):
        super().__init__(model, optimizer, comm, **options)
        self.shards = Shards(self.flat.data.numel(), max(1, self.server_ranks(self.opts)))
        self.server = None       # this rank's Server, if it holds a slice
        self.client = None       # this worker's side of the protocol
        self._meeting = False    # inside a rendezvous: collectives are safe
        first, G = self.server_ranks(self.opts), self.group_size
        leaders = range(first, self.size, G)                 # one rank per worker speaks
        self.remote = [r for r in leaders if r >= 1]         # workers that message
        self.index = {r: (r - first) // G for r in leaders}  # rank -> worker index
        self._counters = torch.zeros(2, dtype=torch.float64)   # a leader's rounds, its own

    def _check_step(self) -> None:
        if not self.is_worker:
            raise RuntimeError(f"rank {self.rank} is a dedicated server: call serve(), not step()")
        if self.finished:
            raise RuntimeError("finish() has ended this worker's exchanges with the servers")
        self._meeting = False

    def _following(self) -> bool:
        """A worker rank that is not its group's leader: it takes the leader's parameters."""
        return self.is_worker and not self.leader

    def _after_step(self) -> None:
        """With groups, the leader's parameters and counters to the group."""
        if self.groups is None or not self.is_worker:
            return
        self.groups.group.bcast(self.flat.data, 0)
        c = self._counters
        c[0], c[1] = self.rounds, self.leader_figure()
        self.groups.group.bcast(c, 0)
        if self._following():
            self.rounds = int(c[0])
            self.follow_figure(c[1].item())

    def leader_figure(self) -> float:
        """A figure of the leader's that its followers record too (none here)."""
        return 0.0

    def follow_figure(self, value: float) -> None:
        """Take the leader's :meth:`leader_figure`."""

    def rendezvous(self) -> None:
        """Drain this worker's messages and meet the servers (and every worker) there."""
        if self.client is not None and not self.finished:
            self.client.sync()
        self._meeting = True

    def serve(self, on_rendezvous=None) -> None:
        """A dedicated server: serve until every worker is done (see the base class)."""
        if self.is_worker:
            raise RuntimeError(f"rank {self.rank} is a worker, not a dedicated server "
                               "(ranks 0..servers-1 serve): call step()")
        server = self.server
        while True:
            server.serve_until(lambda: server.all_done() or (server.synced and server.gathered()))
            if server.all_done() and not server.synced:
                break
            server.resume()
            server.synced.clear()
            self._meeting = True
            if on_rendezvous is not None:
                on_rendezvous()
            self._meeting = False
        server.close()
        self.finished = True

    def finish(self) -> None:
        """Send the last message (DONE) and drain what the servers still send."""
        if self.client is not None and not self.finished:
            self.client.done()
        super().finish()

    def state_dict(self) -> dict:
        """Adds this rank's server and client state; taken inside :meth:`rendezvous`
        (:meth:`serve`'s ``on_rendezvous`` on a dedicated server), where no message is in
        flight."""
        if not self._meeting:
            raise RuntimeError(f"{self.name}: a checkpoint needs every rank at rendezvous()")
        return {**super().state_dict(),
                "server": self.server.state_dict() if self.server is not None else None,
                "client": self.client.state_dict() if self.client is not None else None}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.server is not None:
            self.server.load_state_dict(state["server"])
        if self.client is not None:
            self.client.load_state_dict(state["client"])

    def shared(self) -> torch.Tensor | None:
        """This server's slice of the shared vector (``None`` on other ranks)."""
        raise NotImplementedError

    def consensus(self) -> torch.Tensor:
        """The shared vector on every rank, from its slices (collective: at a rendezvous
        or after finish)."""
        if not (self.finished or self._meeting):
            raise RuntimeError(f"{self.name}: consensus() needs every rank at rendezvous() or "
                               "after finish() (serve() on servers): the servers are still serving")
        out = torch.zeros_like(self.flat.data)
        if self.server is not None:
            self.shards.slice(out, self.rank).copy_(self.shared())
        return self._telemetry.allreduce(out) if self.size > 1 else out

    def server_series(self, train_time: float) -> dict:
        """This server's figures (:meth:`Server.series` and the like)."""
        return self.server.series(train_time)

    def series(self, train_time: float) -> dict:
        """Workers' figures (base class), server 0's per-worker counts, and every
        server's scalar figures as arrays over servers, under ``/{group}``."""
        out = super().series(train_time)
        mine = self.server_series(train_time) if self.server is not None else None
        gathered = self._telemetry.gather(mine, root=0)
        if gathered is None:
            return out
        servers = [g for g in gathered if g is not None]
        for key, value in servers[0].items():
            scalar = not isinstance(value, list)
            out[f"{self.group}/{key}"] = [s[key] for s in servers] if scalar else value
        return out
