"""Streaming fragments: local SGD's averaging split, staggered and overlapped (Streaming DiLoCo).

The flat buffer x is cut into F contiguous fragments x^(f) of (nearly)
equal length, each with its anchor a^(f) (its global value after its last
round, the same on every worker). Fragment f's round is due at the steps
s > 0 with s = floor(f tau / F) (mod tau); there the worker posts the
nonblocking mean of its pseudo-gradient

    Delta^(f) = a^(f) - x^(f)_s                  (one Iallreduce of 1/F of the model)

and keeps training. D inner steps later (``fragment_delay``; 0 <= D < tau)
it applies the round:

    a^(f) <- OuterOpt(a^(f), mean Delta^(f))      (a^(f) - mean Delta^(f) without --outer)
    x^(f) <- alpha x^(f)_{s+D} + (1 - alpha) a^(f) (``fragment_alpha``; 0: replace)

so at most 1/F of the model is on the wire at once and the exchange hides
behind D steps of compute. Without an outer optimizer a^(f) - mean Delta^(f)
is the workers' mean of x^(f)_s: F = 1, D = 0 is local SGD (to rounding).
BatchNorm-style buffers are averaged with fragment 0.

The same pseudo-gradient path carries compressed averaging (``compress``):
the mean of Delta^(f) is a :class:`~mpisgd.compress.CompressedMean`, with
error feedback per fragment; averaging a^(f) - x^(f) instead of x^(f) is
what makes a lossy format usable (it compresses one round's progress, not
the weights).
"""
from __future__ import annotations

import time

import torch

from .outer import Outer, make as make_outer


def bounds(n: int, fragments: int) -> list[tuple[int, int]]:
    """F contiguous ranges covering 0..n, lengths differing by at most one."""
    cuts = [f * n // fragments for f in range(fragments + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


def shapes_within(offsets, shapes, start: int, end: int) -> list[tuple[int, tuple]]:
    """The tensors packed in [start, end) of a flat buffer (``offsets``: each tensor's
    (start, end), ``shapes`` its shape), as (offset from ``start``, shape); a tensor cut by
    the range appears as its 1-D piece."""
    out = []
    for (a, b), shape in zip(offsets, shapes):
        lo, hi = max(a, start), min(b, end)
        if lo < hi:
            whole = (lo, hi) == (a, b)
            out.append((lo - start, tuple(shape) if whole else (hi - lo,)))
    return out


class Fragment:
    """One fragment: its view of x, anchor, exchange buffer, outer step and compressor."""

    def __init__(self, x: torch.Tensor, outer: Outer | None, compressor=None):
        self.x = x
        self.outer = outer
        self.anchor = outer.anchor if outer is not None else x.detach().clone()
        self.send = torch.empty_like(x)          # Delta, then its mean
        self.compressor = compressor
        self.pending = None                      # (posted at step, handle or None once exchanged)
        self.synced = 0                          # the step x last became the anchor (alpha 0)
        self.round = None                        # its round's index in Fragmented.round_bytes


class Fragmented:
    """The fragments of one flat buffer and their staggered rounds: a *stepwise* round,
    which :class:`~mpisgd.algorithms.scheduled.Scheduled` asks after every local step
    (:meth:`after_step`) instead of asking its schedule, and flushes at the end.

    ``comm``: the algorithm's :class:`~mpisgd.comm.Comm`; ``buffers``: floating buffers
    averaged with fragment 0; ``compressor(buf, shapes)``: makes a fragment's compressed
    mean (``None``: a plain ``Iallreduce``); ``delay()``: the injected link delay of a
    round in seconds (spent before the round is applied, overlapped with the D steps).
    """

    def __init__(self, comm, x: torch.Tensor, buffers: torch.Tensor, opts: dict,
                 offsets, shapes, compressor=None, delay=None):
        self.comm, self.buffers = comm, buffers if buffers.numel() else None
        self.tau, self.delay_steps = opts["tau"], opts["fragment_delay"]
        self.alpha = opts["fragment_alpha"]
        self.delay = delay
        self.fragments = []
        for start, end in bounds(x.numel(), opts["fragments"]):
            view = x[start:end]
            frag = Fragment(view, make_outer(opts, view))
            if compressor is not None and end > start:   # the mean of Delta, compressed
                frag.compressor = compressor(frag.send, shapes_within(offsets, shapes, start, end))
            self.fragments.append(frag)
        F = len(self.fragments)
        self.offsets = [f * self.tau // F for f in range(F)]
        self._deadlines: dict[int, float] = {}
        self.round_bytes: list[float] = []       # bytes of each fragment round, in order
        self.landed = 0                          # rounds applied to x so far

    #: The round protocol of :mod:`mpisgd.algorithms.rounds` (a stepwise round).
    simultaneous, stepwise, averaged = False, True, None

    def close(self) -> None:
        """Nothing to free (plain collectives)."""

    def due(self, step: int) -> list[int]:
        """Fragments whose round starts after local step ``step``."""
        return [f for f, off in enumerate(self.offsets) if step > 0 and step % self.tau == off]

    def after_step(self, step: int) -> int:
        """Apply the rounds posted D steps ago, post the rounds due now (D = 0: applied at
        once); returns how many rounds started."""
        for f, frag in enumerate(self.fragments):
            if frag.pending is not None and frag.pending[0] + self.delay_steps <= step:
                self._apply(f, step)
        started = self.due(step)
        for f in started:
            self._start(f, step)
            if not self.delay_steps:
                self._apply(f, step)
        return len(started)

    def _start(self, f: int, step: int) -> None:
        frag = self.fragments[f]
        before = self.comm.bytes_sent
        torch.sub(frag.anchor, frag.x, out=frag.send)
        if frag.compressor is not None:
            handle = frag.compressor.start()       # its wait() runs the second exchange
        else:
            handle = self.comm.iallreduce(frag.send, average=True)
        if f == 0 and self.buffers is not None:     # the model writes them every step:
            self.comm.allreduce(self.buffers, average=True)   # averaged at once
        frag.round = len(self.round_bytes)
        self.round_bytes.append(self.comm.bytes_sent - before)
        if self.delay is not None:
            self._deadlines[f] = time.perf_counter() + self.delay()
        frag.pending = (step, handle)

    def _exchange(self, f: int) -> None:
        """Complete fragment ``f``'s communication (its mean in ``send``), not yet applied."""
        frag = self.fragments[f]
        step, handle = frag.pending
        if handle is None:
            return
        before = self.comm.bytes_sent
        handle.wait()
        self.round_bytes[frag.round] += self.comm.bytes_sent - before
        frag.pending = (step, None)

    @torch.no_grad()
    def _apply(self, f: int, step: int, alpha: float | None = None) -> None:
        """Land fragment ``f``'s round after local step ``step``: the anchor steps, x mixes
        with it by ``alpha`` (default ``fragment_alpha``; 0: replaced)."""
        alpha = self.alpha if alpha is None else alpha
        frag = self.fragments[f]
        self._exchange(f)
        deadline = self._deadlines.pop(f, None)
        if deadline is not None:             # what the D steps did not hide: link time
            self.comm.link_delay(deadline - time.perf_counter())
        if frag.outer is not None:
            frag.outer.descend(frag.send)
        else:
            frag.anchor.sub_(frag.send)
        if alpha:
            frag.x.mul_(alpha).add_(frag.anchor, alpha=1 - alpha)
        else:
            frag.x.copy_(frag.anchor)
            frag.synced = step
        frag.pending = None
        self.landed += 1

    def flush(self, step: int) -> int:
        """After local step ``step``: apply every round in flight, then one blocking round
        of every fragment whose x is not its anchor after this very step (all workers
        then hold the anchors: the last round replaces x, whatever ``fragment_alpha``; a
        fragment that a round replaced at this step needs none, and with an outer
        momentum one more would move it); returns the rounds started."""
        for f, frag in enumerate(self.fragments):
            if frag.pending is not None:
                self._apply(f, step)
        started = 0
        for f, frag in enumerate(self.fragments):
            if frag.synced != step:
                self._start(f, step)
                self._apply(f, step, alpha=0.0)
                started += 1
        return started

    def series(self) -> dict:
        """This worker's figures: fragments, bytes per round (mean and peak), and the
        compressors' counters summed (``compress/...``)."""
        rb = self.round_bytes
        out = {"streaming/fragments": len(self.fragments),
               "streaming/round_bytes_mean": sum(rb) / len(rb) if rb else 0.0,
               "streaming/round_bytes_max": max(rb, default=0.0)}
        compressors = [frag.compressor for frag in self.fragments if frag.compressor is not None]
        if compressors:
            from ..compress import series
            out.update(series(compressors))
        return out

    @property
    def in_flight(self) -> bool:
        return any(frag.pending is not None for frag in self.fragments)

    def state_dict(self) -> dict:
        """Anchors, outer and compressor states, and the rounds in flight: their exchange
        is completed here (every rank checkpoints at the same step; call this before the
        communicator's counters are read), their application stays due at its step, with
        what is left of its injected delay."""
        out, now = [], time.perf_counter()
        for f, frag in enumerate(self.fragments):
            if frag.pending is not None:
                self._exchange(f)
            deadline = self._deadlines.get(f)
            out.append({"anchor": frag.anchor, "send": frag.send,
                        "posted": frag.pending[0] if frag.pending is not None else None,
                        "synced": frag.synced, "round": frag.round,
                        "delay_left": max(0.0, deadline - now) if deadline is not None else None,
                        "outer": frag.outer.state_dict() if frag.outer is not None else None,
                        "compressor": frag.compressor.state_dict()
                        if frag.compressor is not None else None})
        return {"fragments": out, "round_bytes": list(self.round_bytes)}

    def load_state_dict(self, state: dict) -> None:
        now = time.perf_counter()
        self._deadlines.clear()
        for f, (frag, saved) in enumerate(zip(self.fragments, state["fragments"])):
            frag.anchor.copy_(saved["anchor"])
            frag.send.copy_(saved["send"])
            frag.pending = (saved["posted"], None) if saved["posted"] is not None else None
            frag.synced, frag.round = saved["synced"], saved["round"]
            if saved["delay_left"] is not None:
                self._deadlines[f] = now + saved["delay_left"]
            if frag.outer is not None:
                frag.outer.load_state_dict(saved["outer"])
            if frag.compressor is not None:
                frag.compressor.load_state_dict(saved["compressor"])
        self.round_bytes = list(state["round_bytes"])
