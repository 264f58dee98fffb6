"""A centre variable held by one rank, and the protocol workers use to reach it.

Asynchronous EASGD, EAMSGD and DOWNPOUR keep one centre variable ``c`` (a
flat parameter vector) on a centre rank; each worker talks to it on its own
clock with nonblocking point-to-point messages. Worker to centre, with the
message kind as the tag:

========== ========= =====================================================
kind       payload   the centre
========== ========= =====================================================
PULL       none      replies ``c`` (tag REPLY)
PUSH       n values  ``c += payload`` (an elastic difference)
PUSH_PULL  n values  ``c += payload``, then replies ``c`` (DOWNPOUR)
SYNC       none      the worker waits at a rendezvous (a log point)
DONE       none      the worker has finished: nothing more comes from it
========== ========= =====================================================

The centre keeps exactly one receive posted, from any source with any tag,
and serves each message completely before it posts the next: messages are
served in arrival order, never in lock-step, and those of one worker in the
order it sent them (MPI's non-overtaking rule), so a worker's PUSH is
applied before its next PULL is answered. Every PUSH is applied exactly
once: :class:`CenterServer` counts them per worker, :class:`CenterClient`
counts what it sent, and the two agree at the end. A worker sends DONE last
and the centre posts no receive once every worker is done, so shutdown
leaves no message unmatched.

A worker posts its REPLY receive before it sends PULL, so the centre's send
of ``c`` always finds it posted; the centre completes that send before it
changes ``c`` again (MPI forbids touching a buffer while it is being sent).
"""
from __future__ import annotations

import time

import torch
from mpi4py import MPI

from . import ops
from .comm import Comm

PULL, PUSH, PUSH_PULL, SYNC, DONE, REPLY = 11, 12, 13, 14, 15, 16
KINDS = {PULL: "pull", PUSH: "push", PUSH_PULL: "push_pull", SYNC: "sync", DONE: "done"}


class CenterServer:
    """The centre side: ``center`` (a flat tensor) served to ``workers`` (their ranks).

    Args:
        comm: the :class:`~mpisgd.comm.Comm` carrying the protocol.
        center: the centre variable, updated in place.
        workers: ranks of the remote workers (the centre's own worker, if
            it trains too, updates ``center`` directly).
        index: worker rank -> worker index, for the per-worker counters.
    """

    def __init__(self, comm: Comm, center: torch.Tensor, workers: list[int], index: dict[int, int]):
        self.comm, self.center = comm, center
        self.remote = set(workers)
        self.index = index
        self.buffer = torch.empty_like(center)
        self.done: set[int] = set()
        self.synced: set[int] = set()
        n = max(index.values(), default=-1) + 1
        self.counts = {name: [0] * n for name in KINDS.values()}
        self.service_time = 0.0      # seconds spent serving messages
        self.idle_time = 0.0         # seconds blocked waiting for one
        self._recv = None
        self._post()

    def _post(self) -> None:
        if self._recv is None and self.done != self.remote:
            self._recv = self.comm.irecv(self.buffer, MPI.ANY_SOURCE, MPI.ANY_TAG)

    def _serve(self) -> None:
        """Serve the message the posted receive holds, then post the next receive."""
        t0 = time.perf_counter()
        status, self._recv = self._recv.status, None
        source, kind = status.Get_source(), status.Get_tag()
        if kind not in KINDS or source not in self.remote:
            raise RuntimeError(f"centre: unexpected message (tag {kind}) from rank {source}")
        self.counts[KINDS[kind]][self.index[source]] += 1
        if kind in (PUSH, PUSH_PULL):
            self.center.add_(self.buffer)
        if kind in (PULL, PUSH_PULL):
            self.comm.isend(self.center, source, REPLY).wait()
        elif kind == SYNC:
            self.synced.add(source)
        elif kind == DONE:
            self.done.add(source)
        self._post()
        self.service_time += time.perf_counter() - t0

    def poll(self) -> None:
        """Serve every message that has arrived, without blocking."""
        while self._recv is not None and self._recv.test():
            self._serve()

    def serve_until(self, condition) -> None:
        """Serve messages as they arrive until ``condition()`` holds."""
        while not condition():
            if self._recv is None:
                raise RuntimeError("centre: every worker is done but the condition never held")
            t0 = time.perf_counter()
            self._recv.wait()
            self.idle_time += time.perf_counter() - t0
            self._serve()

    def gathered(self) -> bool:
        """Whether every remote worker waits at the rendezvous or is done."""
        return self.synced | self.done == self.remote

    def all_done(self) -> bool:
        return self.done == self.remote

    def updates(self) -> int:
        """Updates applied to the centre (PUSH and PUSH_PULL), the centre's own included."""
        return sum(self.counts["push"]) + sum(self.counts["push_pull"])

    def series(self, train_time: float) -> dict:
        """Counters for the run record: per-worker message counts and the centre's timing.

        ``exchanges_per_s``: updates applied to the centre per second of training.
        """
        return {**{f"center/{name}": counts for name, counts in self.counts.items()},
                "center/service_time": self.service_time, "center/idle_time": self.idle_time,
                "center/exchanges_per_s": self.updates() / train_time if train_time > 0 else 0.0}


class CenterClient:
    """The worker side: one outstanding PUSH at most, replies into one buffer.

    ``pull()`` and ``push_pull()`` block until the centre's reply arrives
    (the reply is what the worker needs next); ``push()`` returns at once
    and the send completes while the worker computes (``progress()`` helps
    it along; the next message waits for it).
    """

    def __init__(self, comm: Comm, center_rank: int, like: torch.Tensor, audit: bool = False):
        self.comm, self.center_rank = comm, center_rank
        self.reply = torch.empty_like(like)
        self.audit = Audit(like, audit)
        self._none = like.new_empty(0)
        self._pending = None

    def _send(self, t: torch.Tensor, kind: int):
        if self._pending is not None:
            self._pending.wait()
        self._pending = self.comm.isend(t, self.center_rank, kind)
        if kind in (PUSH, PUSH_PULL):
            self.audit.add(t)

    def _exchange(self, t: torch.Tensor, kind: int) -> torch.Tensor:
        recv = self.comm.irecv(self.reply, self.center_rank, REPLY)
        self._send(t, kind)
        recv.wait()
        self._pending.wait()       # the reply means the centre has it: completes at once
        self._pending = None
        return self.reply

    def pull(self) -> torch.Tensor:
        """The centre's current value (in :attr:`reply`)."""
        return self._exchange(self._none, PULL)

    def push(self, delta: torch.Tensor) -> None:
        """``c += delta`` at the centre; ``delta`` must not change until the next message."""
        self._send(delta, PUSH)

    def push_pull(self, delta: torch.Tensor) -> torch.Tensor:
        """``c += delta`` at the centre, then its new value (in :attr:`reply`)."""
        return self._exchange(delta, PUSH_PULL)

    def elastic(self, x: torch.Tensor, e: torch.Tensor, alpha: float) -> None:
        """One elastic round: read c; e = alpha (x - c); x -= e; c += e at the centre.

        ``e`` may still be in flight from the previous round until the PULL
        below is sent (sends complete in order), so it is written only after.
        """
        c = self.pull()
        ops.elastic(x, c, e, alpha)
        self.push(e)

    def progress(self) -> None:
        """Let an outstanding send progress (cheap; call between steps)."""
        if self._pending is not None and self._pending.test():
            self._pending = None

    def _signal(self, kind: int) -> None:
        """An empty message, sent and completed (nothing stays in flight)."""
        self._send(self._none, kind)
        self._pending.wait()
        self._pending = None

    def sync(self) -> None:
        """Tell the centre this worker waits at a rendezvous."""
        self._signal(SYNC)

    def done(self) -> None:
        """Tell the centre this worker has finished (its last message)."""
        self._signal(DONE)


class Audit:
    """What a worker pushed: a count, and (when enabled) the float64 sum of the pushes.

    The centre's final value minus its initial one equals the sum of every
    worker's pushes: the test that no update was lost or applied twice.
    """

    def __init__(self, like: torch.Tensor, enabled: bool):
        self.pushes = 0
        self.total = torch.zeros_like(like, dtype=torch.float64) if enabled else None

    def add(self, delta: torch.Tensor) -> None:
        """Count a push of ``delta`` (summed only when enabled)."""
        self.pushes += 1
        if self.total is not None:
            self.total += delta


class LocalCenter:
    """The centre's own worker (``--center rank0``): the client interface, without messages."""

    def __init__(self, server: CenterServer, audit: bool = False):
        self.server, self.center = server, server.center
        self.audit = Audit(self.center, audit)

    def pull(self) -> torch.Tensor:
        self.server.counts["pull"][0] += 1
        return self.center

    def push(self, delta: torch.Tensor) -> None:
        self.server.counts["push"][0] += 1
        self.audit.add(delta)
        self.center.add_(delta)

    def push_pull(self, delta: torch.Tensor) -> torch.Tensor:
        self.server.counts["push_pull"][0] += 1
        self.audit.add(delta)
        return self.center.add_(delta)

    def elastic(self, x: torch.Tensor, e: torch.Tensor, alpha: float) -> None:
        """One elastic round on the local centre, fused: c += e in the same pass."""
        self.server.counts["pull"][0] += 1
        self.server.counts["push"][0] += 1
        before = self.center.clone() if self.audit.total is not None else None
        ops.elastic(x, self.center, self.center, alpha, accumulate=True)
        self.audit.add(self.center - before if before is not None else self.center)

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
