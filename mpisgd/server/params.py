"""The parameter server: K-sync, K-batch-sync, K-async and K-batch-async on server ranks.

Dutta, Joshi et al. (AISTATS 2018), P workers, the parameters ``w`` on the
servers (each server ``s`` owns slice ``s``, :class:`~mpisgd.server.protocol.Shards`),
at version ``j`` (updates applied). A worker computes a gradient at the
``w`` it holds, of version ``v``, and sends it (tag GRAD, carrying ``v``);
staleness is ``j - v``. An update is

    w_{j+1} = w_j - (eta / K) sum_{i in batch} g_i

applied by the server's copy of the worker's optimizer (its class and
settings, over the slice: element-wise optimizers only), so momentum or Adam
run on the server as in a real parameter server.

========== ==================================== ========================================
protocol   the server updates after             then
========== ==================================== ========================================
k-sync     K fresh gradients, distinct workers  sends w_{j+1} to every worker: those
           (``ps-sync``: K = P)                 still computing abandon it (cancelled)
k-batch-   K fresh gradients, any workers       the same; a worker that pushed goes on
sync                                            computing at w_j until w_{j+1} arrives
k-async    K gradients of K distinct workers,   replies w_{j+1} to those K; the others
           stale ones included                  finish and push stale gradients later
k-batch-   K gradients, any workers             every push is answered at once with the
async      (``async``: K = 1)                   current w
========== ==================================== ========================================

Fresh means computed at ``w_j``; in the sync protocols a stale gradient is
dropped on arrival (counted, never applied). Every gradient received is
counted as applied or dropped, per worker; the staleness of each is
histogrammed. With fewer than K workers still training (done, or waiting at
a rendezvous) the K of the distinct-worker protocols shrinks to that number;
gradients left over when every worker is done form one last update.

Staleness-adaptive learning rate (``staleness_lr=(C, eta_max)``): gradient
i's rate is ``eta_i = min(C / ||w_j - w_tau(i)||^2, eta_max)`` with
``w_tau(i)`` the parameters it was computed at; the server's optimizer runs
at ``eta_max`` on ``(1/K) sum (eta_i / eta_max) g_i``, which for plain SGD is
exactly ``w -= (1/K) sum eta_i g_i``. The server keeps the ``w`` it last
sent each worker (``P`` slices of memory) to know ``w_tau(i)``.

Parameters go out from snapshots (:class:`Outbox`), one per version, so the
server updates ``w`` while earlier versions are still on the wire.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass

import torch

from ..comm import Comm
from .protocol import BYE, DONE, GRAD, PARAMS, RESUME, SPAN, SYNC, Client, Server, Shards, tag



@dataclass(frozen=True)
class Protocol:
    """How a parameter server batches gradients, whom it answers, and what a worker waits for.

    Attributes:
        name: ``k-sync``, ``k-batch-sync``, ``k-async`` or ``k-batch-async``.
        distinct_workers: an update waits for K distinct workers (as many as
            still train, if fewer), not for any K gradients.
        drop_stale: only fresh gradients count (computed at ``w_j``): a stale
            one is dropped, and a newer version cancels a worker's computation.
            The new version goes to every training worker.
        reply_each: every gradient is answered at once with the current ``w``
            (otherwise an update is answered: by ``drop_stale``, to every
            training worker, else to the batch's workers).
        wait_version: after a push the worker waits for the next version
            (otherwise it goes on at the one it holds until the next arrives,
            or, without ``drop_stale``, waits for the server's answer).
    """
    name: str
    distinct_workers: bool
    drop_stale: bool
    reply_each: bool = False
    wait_version: bool = False


PROTOCOLS = {p.name: p for p in (
    Protocol("k-sync", distinct_workers=True, drop_stale=True, wait_version=True),
    Protocol("k-batch-sync", distinct_workers=False, drop_stale=True),
    Protocol("k-async", distinct_workers=True, drop_stale=False),
    Protocol("k-batch-async", distinct_workers=False, drop_stale=False, reply_each=True),
)}


class Outbox:
    """Snapshots of ``w`` on the wire: one per version sent, reused once its sends complete.

    At most ``depth`` snapshots exist; when all are in flight the oldest is
    waited for (its receivers always have a receive posted).
    """

    def __init__(self, comm: Comm, w: torch.Tensor, span: int, depth: int = 4):
        self.comm, self.w, self.span, self.depth = comm, w, span, depth
        self.slots: list[list] = []      # [snapshot, version, handles]
        self.current = None
        self.signals: list = []          # handles of empty messages
        self._none = w.new_empty(0)

    def _slot(self, version: int) -> list:
        """The snapshot of ``w`` at ``version`` (taken now unless it is the current one)."""
        if self.current is not None and self.current[1] == version:
            return self.current
        for slot in self.slots:
            slot[2] = [h for h in slot[2] if not h.test()]
        free = [s for s in self.slots if not s[2] and s is not self.current]
        if free:
            slot = free[0]
        elif len(self.slots) < self.depth:
            slot = [torch.empty_like(self.w), -1, []]
            self.slots.append(slot)
        else:
            slot = min((s for s in self.slots if s is not self.current), key=lambda s: s[1])
            for h in slot[2]:
                h.wait()
            slot[2] = []
        slot[0].copy_(self.w)
        slot[1] = version
        self.current = slot
        return slot

    def send(self, dest: int, kind: int, version: int) -> torch.Tensor:
        """Send ``w`` (at ``version``) to ``dest``; returns the snapshot sent."""
        slot = self._slot(version)
        slot[2].append(self.comm.isend(slot[0], dest, tag(kind, version, self.span)))
        return slot[0]

    def signal(self, dest: int, kind: int) -> None:
        """Send an empty message of ``kind`` to ``dest``."""
        self.signals = [h for h in self.signals if not h.test()]
        self.signals.append(self.comm.isend(self._none, dest, tag(kind, 0, self.span)))

    def close(self) -> None:
        """Complete every send."""
        for h in [h for slot in self.slots for h in slot[2]] + self.signals:
            h.wait()
        for slot in self.slots:
            slot[2] = []
        self.signals = []


class ParameterServer(Server):
    """One server rank of the parameter server: slice ``w`` of the parameters.

    Args:
        comm: the protocol's :class:`~mpisgd.comm.Comm`.
        w: this server's slice of the parameters (updated in place).
        optimizer: the worker's optimizer, whose class and settings the
            server uses on ``w`` (the first parameter group's).
        protocol: a :class:`Protocol` (:data:`PROTOCOLS`).
        k: K.
        workers, index: the remote workers' ranks and rank -> worker index.
        staleness_lr: ``(C, eta_max)`` or ``None``.
    """

    kinds = (GRAD, SYNC, DONE)
    #: ``[]`` to trace (tests): ``("grad", worker, computed at, version, rate or None if
    #: dropped, gradient)`` per gradient, ``("update", version, w, active workers, final)``
    #: per update, in the order the server did them.
    trace: list | None = None
    checkpointed = Server.checkpointed + ("acc", "batch", "version", "applied", "dropped",
                                          "staleness", "rates", "update_times", "first_done",
                                          "sent")

    def state_dict(self) -> dict:
        """Adds the partial batch, the version, the counters and the server optimizer's
        state (``w`` is the algorithm's flat buffer: checkpointed with it)."""
        return {**super().state_dict(), "optimizer": self.optimizer.state_dict(),
                "elapsed": time.perf_counter() - self.started}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.started = time.perf_counter() - state["elapsed"]

    def __init__(self, comm: Comm, w: torch.Tensor, optimizer: torch.optim.Optimizer,
                 protocol: Protocol, k: int, workers: list[int], index: dict[int, int],
                 staleness_lr: tuple[float, float] | None = None):
        super().__init__(comm, w, workers, index)
        self.w, self.protocol, self.k = w, protocol, k
        self.param = torch.nn.Parameter(w, requires_grad=True)    # shares w's memory
        group = optimizer.param_groups[0]      # what the constructor takes (AdamW's defaults
        takes = inspect.signature(type(optimizer)).parameters   # hold a key it refuses)
        settings = {key: group[key] for key in optimizer.defaults if key in group and key in takes}
        self.staleness_lr = staleness_lr
        if staleness_lr is not None:
            settings["lr"] = staleness_lr[1]
        self.optimizer = type(optimizer)([self.param], **settings)
        self.param.grad = torch.zeros_like(w)
        self.acc = self.param.grad          # the batch's gradient sum
        self.batch: list[int] = []          # the workers in it (for k-async's replies)
        self.version = 0
        self.outbox = Outbox(comm, w, self.span)
        n = len(self.counts["grad"])
        self.applied, self.dropped = [0] * n, [0] * n
        self.staleness: list[int] = []      # histogram: staleness -> gradients
        self.rates: list[float] = []        # staleness_lr: each applied gradient's eta_i
        self.sent = {r: w.clone() for r in workers} if staleness_lr else None
        self.started = time.perf_counter()
        self.update_times: list[float] = []      # when each update was applied
        self.first_done = None                   # when the first worker finished

    # ---- messages -----------------------------------------------------

    def handle(self, source: int, kind: int, mod: int) -> None:
        stale = (self.version - mod) % self.span     # the version it was computed at: j - stale
        self.staleness.extend([0] * (stale + 1 - len(self.staleness)))
        self.staleness[stale] += 1
        i = self.index[source]
        if stale and self.protocol.drop_stale:
            self.dropped[i] += 1
            self._traced("grad", i, self.version - stale, self.version, None)
            return
        self.applied[i] += 1
        rate = self._rate(source)
        self._traced("grad", i, self.version - stale, self.version, rate)
        if self.batch:
            self.acc.add_(self.buffer, alpha=rate)
        elif rate != 1.0:                       # the first of a batch: no zeroing pass
            torch.mul(self.buffer, rate, out=self.acc)
        else:
            self.acc.copy_(self.buffer)
        self.batch.append(source)
        if self.protocol.reply_each:
            if len(self.batch) >= self.k:
                self._update()
            self._send(source, PARAMS)
        else:
            self._maybe_update()

    @property
    def updates(self) -> int:
        """Updates applied so far (the version of ``w``)."""
        return self.version

    def _rate(self, source: int) -> float:
        """``eta_i / eta_max`` (1 without a staleness-adaptive rate)."""
        if self.staleness_lr is None:
            return 1.0
        c, eta_max = self.staleness_lr
        d2 = float(torch.sub(self.w, self.sent[source]).square_().sum())
        eta = eta_max if d2 <= c / eta_max else c / d2
        self.rates.append(eta)
        return eta / eta_max

    def _needed(self) -> int:
        """Gradients the next update waits for: K, or, in the distinct-worker protocols,
        as many workers as still train (a worker waiting for its reply trains)."""
        if self.protocol.distinct_workers:
            return max(1, min(self.k, self.active()))
        return self.k

    def _maybe_update(self) -> None:
        """Update if the batch is complete; send the new ``w`` to whom the protocol says."""
        if not self.batch or len(self.batch) < self._needed():
            return
        batch = self._update()
        if self.protocol.drop_stale:          # the new version, and the cancellation
            for r in sorted(self.remote - self.done - self.synced):
                self._send(r, PARAMS)
        else:                                    # k-async: the batch's workers
            for r in batch:
                self._send(r, PARAMS)

    def _update(self, final: bool = False) -> list[int]:
        """w_{j+1} = w_j - eta/|batch| sum g (one step of the server's optimizer);
        returns the batch's workers."""
        if len(self.batch) > 1:
            self.acc.div_(len(self.batch))
        self.optimizer.step()
        batch, self.batch = self.batch, []
        self.version += 1
        self.update_times.append(time.perf_counter() - self.started)
        if self.trace is not None:
            self.trace.append(("update", self.version, self.w.clone(), self.active(), final))
        return batch

    def _traced(self, *event) -> None:
        if self.trace is not None:
            self.trace.append((*event, self.buffer.clone()))

    def _send(self, dest: int, kind: int) -> None:
        snapshot = self.outbox.send(dest, kind, self.version)
        if self.sent is not None:
            self.sent[dest].copy_(snapshot)

    def on_sync(self, source: int) -> None:
        self._maybe_update()

    def on_done(self, source: int) -> None:
        if self.first_done is None:
            self.first_done = time.perf_counter() - self.started
        self.outbox.signal(source, BYE)
        if self.all_done():
            return
        self._maybe_update()

    def resume(self) -> None:
        """Send every worker at the rendezvous the current ``w`` (tag RESUME)."""
        for r in sorted(self.synced):
            self._send(r, RESUME)

    def close(self) -> None:
        """Apply what is left (fewer than K gradients) and complete every send."""
        if self.batch:
            self._update(final=True)
        self.outbox.close()

    def series(self, train_time: float) -> dict:
        out = {**super().series(train_time), "applied": self.applied, "dropped": self.dropped,
               "staleness": self.staleness or [0], "updates": self.updates,
               "update_time": self.update_times,
               "updates_per_s": self.updates / train_time if train_time > 0 else 0.0}
        if self.rates:
            out["staleness_lr"] = self.rates
        return out


class ParameterClient(Client):
    """A worker of the parameter server: pushes gradients, adopts the versions of ``w`` sent.

    One receive per server stays posted, into an inbox (never straight into
    the parameters, which the worker is computing with); a message adopted
    is copied into ``w``'s slice and the receive posted again. In the sync
    protocols the servers move in lock-step, so adopting one message from
    every server gives one whole version.
    """

    checkpointed = ("versions",)

    def __init__(self, comm: Comm, shards: Shards, w: torch.Tensor):
        super().__init__(comm, shards)
        self.w = w
        self.inbox = torch.empty_like(w)
        self.versions = [0] * shards.servers
        self._recvs = [self._post(s) for s in self.servers]

    def _post(self, s: int):
        return self.comm.irecv(self.shards.slice(self.inbox, s), s)

    def _take(self, s: int) -> int:
        """Wait for server ``s``'s message, adopt it; returns its kind."""
        recv = self._recvs[s]
        recv.wait()
        kind, mod = recv.status.Get_tag() % SPAN, recv.status.Get_tag() // SPAN
        if kind == BYE:
            self._recvs[s] = None
            return kind
        known = self.versions[s]
        self.versions[s] = known + (mod - known) % self.span
        self.shards.slice(self.w, s).copy_(self.shards.slice(self.inbox, s))
        self._recvs[s] = self._post(s)
        return kind

    def arrived(self) -> bool:
        """Whether a server has sent something not yet adopted (cheap: tests the receives)."""
        return any(r is not None and r.test() for r in self._recvs)

    def push(self, grad: torch.Tensor) -> None:
        """Send each server its slice of ``grad``, tagged with the version it was computed at;
        ``grad`` must not change before :meth:`settle`."""
        self.send(GRAD, self.shards.slices(grad), self.versions)

    def adopt(self, wait: bool) -> bool:
        """Adopt every version that has arrived (with ``wait``: at least one more);
        returns whether ``w`` changed."""
        changed = False
        while wait or self.arrived():
            for s in self.servers:
                self._take(s)
            changed, wait = True, False
        return changed

    def reply(self) -> None:
        """Adopt one message from every server (the answers to a push)."""
        for s in self.servers:
            self._take(s)

    def _until(self, kind: int) -> None:
        for s in self.servers:
            while self._take(s) != kind:
                pass

    def sync(self) -> None:
        """Wait at the rendezvous: SYNC, then adopt until every server's RESUME."""
        self.signal(SYNC)
        self._until(RESUME)

    def done(self) -> None:
        """The last message (DONE); drain until every server's BYE."""
        self.signal(DONE)
        self._until(BYE)
