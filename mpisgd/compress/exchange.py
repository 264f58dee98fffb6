"""Each compressed format's exchange: ``start(acc) -> pending``, ``finish(pending)``.

* :class:`Chunked` (fp16, bf16, int8): an Alltoall gives rank r chunk r of
  every rank (a reduce-scatter), rank r sums its chunk in float and
  compresses it again, an Allgather brings every chunk to every rank;
* :class:`TopK`: an Allgather of every rank's values and indices;
* :class:`PowerSGD`: two Allreduces of the factors P and Q (and one of the
  1-D rest).

They belong to a :class:`~mpisgd.compress.mean.CompressedMean` (``cm``), which
counts their exchanges and owns the residual.
"""
from __future__ import annotations

import math

import torch

from .. import streams
from ..comm import Handle
from .codecs import BLOCK, FP16_MAX, dequantize, quantize, topk


class Codec:
    """A format's exchange: ``start(acc) -> pending``, ``finish(pending)`` (buf <- mean)."""

    def __init__(self, cm, arg, shapes):
        self.cm, self.comm, self.buf = cm, cm.comm, cm.buf
        self.P, self.n = cm.comm.size, cm.buf.numel()
        self.like = dict(dtype=cm.buf.dtype, device=cm.buf.device)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Chunked(Codec):
    """fp16, bf16, int8: Alltoall (reduce-scatter), sum in float, recompress, Allgather.

    Every pass over the buffer is a one-dtype torch kernel: a half or int8 operand is
    first copied into a float scratch (``tmp``, ``part``), since torch's mixed-dtype
    CPU kernels take ten times as long as the copy and the single-dtype operation.
    """

    HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}

    def __init__(self, cm, arg, shapes):
        super().__init__(cm, arg, shapes)
        P, dev = self.P, cm.buf.device
        chunk = -(-self.n // P)
        self.int8 = cm.format == "int8"
        if self.int8:                     # nb equal blocks of b <= BLOCK per chunk
            self.nb = -(-chunk // BLOCK)
            self.b = -(-chunk // self.nb)
            chunk = self.nb * self.b
        self.chunk = chunk
        N = P * chunk
        self.work = torch.zeros(N, **self.like) if N != self.n else None   # padded a_r
        kind = torch.int8 if self.int8 else self.HALF[cm.format]
        self.send = torch.empty(P, chunk, dtype=kind, device=dev)
        self.recv = torch.empty_like(self.send)
        self.gsend = torch.empty(chunk, dtype=kind, device=dev)
        self.grecv = torch.empty_like(self.send)
        self.red = torch.empty(chunk, **self.like)           # float32 or float64 sums
        self.part = torch.empty(chunk, **self.like)          # one rank's chunk, decoded
        self.tmp = torch.empty(N, **self.like)               # D(C(a)) or round(a / s); result
        if self.int8:
            self.step = torch.empty(P, self.nb, dtype=torch.float32, device=dev)
            self.rstep = torch.empty_like(self.step)
            self.gstep = torch.empty(self.nb, dtype=torch.float32, device=dev)
            self.grstep = torch.empty_like(self.step)

    def _padded(self, acc: torch.Tensor) -> torch.Tensor:
        if self.work is None:
            return acc
        self.work[:self.n].copy_(acc)
        return self.work

    def start(self, acc):
        x = self._padded(acc)
        ef = self.cm.residual is not None
        if self.int8:
            xb, qf = x.view(-1, self.b), self.tmp.view(-1, self.b)
            quantize(xb, self.send.view(-1, self.b), self.step.view(-1), qf)
            if ef:                           # a - q s, in place of a
                xb.addcmul_(qf, self.step.view(-1, 1).to(x.dtype), value=-1)
        elif self.cm.format == "fp16":       # clamped, not inf: the excess is fed back
            self.send.view(-1).copy_(torch.clamp(x, -FP16_MAX, FP16_MAX, out=self.tmp))
            if ef:                           # a - D(C(a))
                x.sub_(self.tmp.copy_(self.send.view(-1)))
        else:
            self.send.view(-1).copy_(x)
            if ef:
                x.sub_(self.tmp.copy_(self.send.view(-1)))
        if ef and x is not acc:
            acc.copy_(x[:self.n])
        handles = [self.cm._exchange(lambda: self.comm.ialltoall(self.send, self.recv))]
        if self.int8:
            handles.append(self.cm._exchange(lambda: self.comm.ialltoall(self.step, self.rstep)))
        return Handle.all(*handles)

    def _decode(self, q: torch.Tensor, step, out: torch.Tensor) -> torch.Tensor:
        """``out`` <- D(q) (one chunk or all)."""
        if step is None:
            return out.copy_(q)
        return dequantize(q.view(-1, self.b), step.reshape(-1), out.view(-1, self.b))

    def finish(self, pending):
        self.cm._wait(pending)
        P, red, part = self.P, self.red, self.part
        for r in range(P):
            step = self.rstep[r] if self.int8 else None
            self._decode(self.recv[r], step, red if r == 0 else part)
            if r:
                red.add_(part)
        red.mul_(1.0 / P)
        if self.int8:
            quantize(red.view(self.nb, self.b), self.gsend.view(self.nb, self.b), self.gstep,
                     part.view(self.nb, self.b))
            got = Handle.all(
                self.cm._exchange(lambda: self.comm.iallgather(self.gsend, self.grecv)),
                self.cm._exchange(lambda: self.comm.iallgather(self.gstep, self.grstep)))
        else:
            self.gsend.copy_(red)
            got = Handle.all(self.cm._exchange(lambda: self.comm.iallgather(self.gsend, self.grecv)))
        self.cm._wait(got)
        out = self.buf if self.work is None else self.tmp
        self._decode(self.grecv.view(-1), self.grstep if self.int8 else None, out)
        if out is not self.buf:
            self.buf.copy_(out[:self.n])


class TopK(Codec):
    """topk:RATIO: Allgather of every rank's k values and indices, scatter-added."""

    def __init__(self, cm, ratio, shapes):
        super().__init__(cm, ratio, shapes)
        self.k = min(self.n, max(1, math.ceil(ratio * self.n)))
        dev = cm.buf.device
        index = torch.int32 if self.n < 2 ** 31 else torch.int64
        self.abs = torch.empty(self.n, **self.like)
        self.values = torch.empty(self.k, **self.like)
        self.picked = torch.empty(self.k, dtype=torch.int64, device=dev)
        self.index = torch.empty(self.k, dtype=index, device=dev)
        self.rvalues = torch.empty(self.P, self.k, **self.like)
        self.rindex = torch.empty(self.P, self.k, dtype=index, device=dev)

    def start(self, acc):
        topk(acc, self.k, self.abs, self.values, self.picked)
        self.index.copy_(self.picked)
        if self.cm.residual is not None:       # the residual: a with the sent entries zeroed
            acc.index_fill_(0, self.picked, 0)
        ex = self.cm._exchange
        return Handle.all(ex(lambda: self.comm.iallgather(self.values, self.rvalues)),
                        ex(lambda: self.comm.iallgather(self.index, self.rindex)))

    def finish(self, pending):
        self.cm._wait(pending)
        buf = self.buf
        buf.zero_()
        for r in range(self.P):        # rank order, no duplicate index within a rank:
            buf.index_add_(0, self.rindex[r], self.rvalues[r])   # deterministic everywhere
        buf.mul_(1.0 / self.P)


class PowerSGD(Codec):
    """powersgd:RANK: P = M Q, Allreduce-mean, orthogonalise, Q = M^T P, Allreduce-mean."""

    def __init__(self, cm, rank, shapes):
        super().__init__(cm, rank, shapes)
        self.mats = []                 # (offset, n, m, r, p offset, q offset)
        p_total = q_total = 0
        for offset, shape in sorted(shapes or [], key=lambda s: s[0]):
            shape = tuple(shape)
            numel = math.prod(shape)
            if len(shape) < 2 or not numel:
                continue
            n, m = shape[0], numel // shape[0]
            r = min(rank, n, m)
            self.mats.append((offset, n, m, r, p_total, q_total))
            p_total, q_total = p_total + n * r, q_total + m * r
        self.rest, at = [], 0          # ranges not in a matrix: averaged exactly
        for offset, n, m, *_ in self.mats:
            if offset > at:
                self.rest.append((at, offset))
            at = max(at, offset + n * m)
        if at < self.n:
            self.rest.append((at, self.n))
        whole = self.rest == [(0, self.n)]
        self.packed = None if whole or not self.rest else \
            torch.empty(sum(b - a for a, b in self.rest), **self.like)
        self.p = torch.zeros(p_total, **self.like)
        g = torch.Generator().manual_seed(streams.torch_seed(streams.POWERSGD))  # every rank alike
        self.q = torch.randn(q_total, generator=g, dtype=cm.buf.dtype).to(cm.buf.device)

    def _views(self, t: torch.Tensor, i: int):
        offset, n, m, r, po, qo = self.mats[i]
        return (t[offset:offset + n * m].view(n, m), self.p[po:po + n * r].view(n, r),
                self.q[qo:qo + m * r].view(m, r))

    def start(self, acc):
        self.acc = acc
        for i in range(len(self.mats)):
            M, P, Q = self._views(acc, i)
            torch.matmul(M, Q, out=P)
        ex, handles = self.cm._exchange, []
        if self.mats:
            handles.append(ex(lambda: self.comm.iallreduce(self.p, average=True)))
        if self.rest:
            rest = acc if self.packed is None else self._pack(acc)
            handles.append(ex(lambda: self.comm.iallreduce(rest, average=True)))
        return Handle.all(*handles)

    def _pack(self, acc):
        at = 0
        for a, b in self.rest:
            self.packed[at:at + b - a].copy_(acc[a:b])
            at += b - a
        return self.packed

    def finish(self, pending):
        self.cm._wait(pending)
        acc, buf = self.acc, self.buf
        for i in range(len(self.mats)):
            M, P, Q = self._views(acc, i)
            P.copy_(torch.linalg.qr(P).Q)
            torch.matmul(M.T, P, out=Q)
        if self.mats:
            self.cm._wait(Handle.all(self.cm._exchange(
                lambda: self.comm.iallreduce(self.q, average=True))))
        at = 0
        for a, b in self.rest:         # the exact mean (before acc, which may be buf, changes)
            if self.packed is not None:
                buf[a:b].copy_(self.packed[at:at + b - a])
            elif acc is not buf:
                buf.copy_(acc)
            if self.cm.residual is not None:
                self.cm.residual[a:b].zero_()
            at += b - a
        for i in range(len(self.mats)):
            M, P, Q = self._views(acc, i)
            if acc is buf:             # no error feedback: M is buf itself
                torch.matmul(P, Q.T, out=M)
            else:
                approx = buf[self.mats[i][0]:self.mats[i][0] + M.numel()].view_as(M)
                torch.matmul(P, Q.T, out=approx)
                M.sub_(approx)         # the residual: a - P Q^T
        self.acc = None

    def state_dict(self) -> dict:
        return {"q": self.q}

    def load_state_dict(self, state: dict) -> None:
        self.q.copy_(state["q"])


#: format -> its exchange.
EXCHANGES = {"fp16": Chunked, "bf16": Chunked, "int8": Chunked, "topk": TopK,
             "powersgd": PowerSGD}
