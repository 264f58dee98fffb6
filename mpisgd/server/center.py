"""The centre variable c of asynchronous EASGD, EAMSGD and DOWNPOUR, on server ranks.

Three verbs, on the protocol of :mod:`mpisgd.server.protocol`: PULL (read
c), PUSH (c += delta), PUSH_PULL (c += delta, then read c). The update
rules that decide what delta is live in the algorithms
(:mod:`mpisgd.algorithms.async_center`); the transport only adds.
"""
from __future__ import annotations

import torch

from ..comm import Comm
from .protocol import DONE, PULL, PUSH, PUSH_PULL, REPLY, SYNC, Checkpointed, Client, Server, \
    Shards


class CenterServer(Server):
    """The centre side: slice ``center`` of ``c`` (a flat tensor) served to ``workers``.

    The centre's own worker, if it trains too (``--center rank0``), updates
    ``center`` directly (:class:`LocalCenter`). ``outer``: an
    :class:`~mpisgd.algorithms.outer.Outer` anchored on ``center`` that steps it on
    each push's pseudo-gradient -delta (``--outer``); ``None``: c += delta.
    """

    kinds = (PULL, PUSH, PUSH_PULL, SYNC, DONE)
    checkpointed = Server.checkpointed + ("center",)

    def __init__(self, comm: Comm, center: torch.Tensor, workers: list[int], index: dict[int, int],
                 outer=None):
        self.center, self.outer = center, outer
        super().__init__(comm, center, workers, index)

    def apply(self, delta: torch.Tensor) -> torch.Tensor:
        """c += delta, or the outer step on -delta; returns c."""
        if self.outer is None:
            return self.center.add_(delta)
        self.outer.add(delta)
        return self.center

    def handle(self, source: int, kind: int, mod: int) -> None:
        if kind in (PUSH, PUSH_PULL):
            self.apply(self.buffer)
        if kind in (PULL, PUSH_PULL):
            self.comm.isend(self.center, source, REPLY).wait()

    @property
    def updates(self) -> int:
        """Updates applied to the centre (PUSH and PUSH_PULL), the centre's own included."""
        return sum(self.counts["push"]) + sum(self.counts["push_pull"])

    def series(self, train_time: float) -> dict:
        """Counters and timing; ``exchanges_per_s``: updates applied per second of training."""
        return {**super().series(train_time),
                "exchanges_per_s": self.updates / train_time if train_time > 0 else 0.0}


class CenterClient(Client):
    """The worker side: one outstanding PUSH at most, replies into one buffer.

    ``pull()`` and ``push_pull()`` block until every server's reply arrived
    (the reply is what the worker needs next); ``push()`` returns at once
    and the sends complete while the worker computes (``progress()`` helps
    them along; the next message waits for them). ``pushes`` counts the
    updates this worker sent.
    """

    checkpointed = ("pushes",)

    def __init__(self, comm: Comm, shards: Shards, like: torch.Tensor):
        super().__init__(comm, shards)
        self.reply = torch.empty_like(like)
        self.pushes = 0

    def _exchange(self, kind: int, delta: torch.Tensor | None = None) -> torch.Tensor:
        slices = self.shards.slices(self.reply)
        recvs = [self.comm.irecv(slices[s], s, REPLY) for s in self.servers]
        self.send(kind, None if delta is None else self.shards.slices(delta))
        for r in recvs:
            r.wait()
        self.settle()              # the replies mean the servers have it: completes at once
        return self.reply

    def pull(self) -> torch.Tensor:
        """The centre's current value (in :attr:`reply`).

        A ``delta`` pushed before may still be in flight until this PULL is
        sent (sends complete in order): write it again only after."""
        return self._exchange(PULL)

    def push(self, delta: torch.Tensor) -> None:
        """``c += delta`` at the centre; ``delta`` must not change until the next message."""
        self.send(PUSH, self.shards.slices(delta))
        self.pushes += 1

    def push_pull(self, delta: torch.Tensor) -> torch.Tensor:
        """``c += delta`` at the centre, then its new value (in :attr:`reply`)."""
        self.pushes += 1
        return self._exchange(PUSH_PULL, delta)

    def sync(self) -> None:
        """Tell the centre this worker waits at a rendezvous."""
        self.signal(SYNC)

    def done(self) -> None:
        """Tell the centre this worker has finished (its last message)."""
        self.signal(DONE)


class LocalCenter(Checkpointed):
    """The centre's own worker (``--center rank0``): the client interface, without messages.

    :meth:`pull` returns the centre itself, so a caller may update it in
    place (then :meth:`pushed` counts the update)."""

    checkpointed = ("pushes",)      # the centre itself is the server's

    def __init__(self, server: CenterServer):
        self.server, self.center = server, server.center
        self.pushes = 0

    def pull(self) -> torch.Tensor:
        self.server.counts["pull"][0] += 1
        return self.center

    def push(self, delta: torch.Tensor) -> None:
        self.server.apply(delta)
        self.pushed()

    def pushed(self) -> None:
        """Count an update the caller applied to :meth:`pull`'s tensor in place."""
        self.server.counts["push"][0] += 1
        self.pushes += 1

    def push_pull(self, delta: torch.Tensor) -> torch.Tensor:
        self.server.counts["push_pull"][0] += 1
        self.pushes += 1
        return self.server.apply(delta)

    def progress(self) -> None:
        """Serve the remote workers' messages that have arrived (between own steps)."""
        self.server.poll()

    def sync(self) -> None:
        """Serve until every remote worker waits at the rendezvous (or is done)."""
        self.server.counts["sync"][0] += 1
        self.server.serve_until(self.server.gathered)
        self.server.synced.clear()

    def done(self) -> None:
        """Serve until every remote worker is done."""
        self.server.counts["done"][0] += 1
        self.server.serve_until(self.server.all_done)
