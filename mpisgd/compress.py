"""Compressed averaging with error feedback: the mean of a flat buffer over ranks, sent small.

Rank r holds a buffer buf_r and a residual e_r (zero at first, local). A
round of :class:`CompressedMean` computes, with C a compressor and D its
decoder,

    a_r = buf_r + e_r,    buf <- (1/P) sum_r D(C(a_r)),    e_r <- a_r - D(C(a_r))

so what one round's compression drops is sent in a later round (error
feedback: Seide et al. 2014; Karimireddy et al. 2019, EF-SGD; Vogels et al.
2019, PowerSGD). Every rank ends with the same ``buf``: each decodes the
same received data. Formats (``spec``, read by
:func:`~mpisgd.algorithms.options.parse_compress`):

* ``fp16``, ``bf16``: a_r cast to the half type, relative error <= 2^-11
  (fp16) or 2^-8 (bf16) per element; fp16 clamps to +-65504 first (what exceeds
  it stays in the residual, never an infinity).
* ``int8``: blocks of at most :data:`BLOCK` elements, each with its fp32
  step s = max|a| / 127 and q = round(a / s) in [-127, 127]; error <= s/2 =
  max|a|/254 per element. The steps travel with the data.
* ``topk:RATIO``: the k = max(1, ceil(RATIO n)) entries of largest |a_r|
  (values and int32 indices); D scatters them into zeros.
* ``powersgd:RANK``: each tensor of >= 2 dims (``shapes``) as a matrix M
  (n x m, first dim by the rest), r = min(RANK, n, m), Q (m x r) warm-started
  from the previous round (first: seeded normal, equal on every rank):

      P = mean_r M_r Q,  P <- orth(P) (QR),  Q = mean_r M_r^T P,  D(C(M)) = P Q^T

  two Allreduces of all matrices' P and Q, packed; 1-D tensors (everything
  when ``shapes`` is None) are averaged exactly by one more Allreduce.

Half and integer formats are never summed by MPI (the torchft pattern):
the compressed buffer is split in P chunks (padded to a multiple of P), an
Alltoall gives rank r chunk r of every rank (a reduce-scatter), rank r
decodes and sums its P contributions in float32 (float64 for a float64
buffer), divides by P, compresses that chunk again and an Allgather brings
every chunk to every rank. So the result is D(C(mean_r D(C(a_r)))): the
second compression's error (one per chunk, the same on every rank) is not
fed back. Top-k gathers every rank's pairs and each rank sums them;
PowerSGD's factors are float and go through Allreduce.

Bytes, as :class:`~mpisgd.comm.Comm` counts them: an Alltoall counts
(P-1)/P of what it sends and an Allgather (P-1) times it, so a chunked
format moves 2 (P-1)/P of its compressed size, against 2 (P-1)/P of
``buf.nbytes`` for the dense Allreduce: fp16 exactly 1/2 of float32, int8
1/4 plus 4 bytes per block (n a multiple of P and of the block).

Example (a training loop of one's own; ``algo.telemetry`` is an uncounted Comm)::

    comm = Comm(MPI.COMM_WORLD)
    grad = torch.zeros(n)
    mean = CompressedMean(comm, grad, "int8")
    mean.calibrate(comm.sibling())          # the dense Allreduce's time, for paid()
    for x, y in loader:
        ...                                 # grad <- this rank's gradient
        mean.run()                          # grad <- the compressed mean over ranks
    print(paid(series([mean]), "int8"))
"""
from __future__ import annotations

import math
import statistics
import time

import torch

from .algorithms.options import parse_compress
from . import streams
from .comm import REDUCIBLE
from .staging import Spans

__all__ = ["BLOCK", "CompressedMean", "dequantize", "paid", "quantize", "series", "topk"]

#: The largest int8 block: one fp32 step per BLOCK elements (1/1024 of the int8 bytes x 4).
BLOCK = 1024

#: The smallest int8 step: the smallest normal float32.
TINY = torch.finfo(torch.float32).tiny

#: fp16's largest finite value: a cast clamps to it (the excess stays in the residual).
FP16_MAX = torch.finfo(torch.float16).max

COUNTERS = ("bytes", "dense_bytes", "rounds", "codec_seconds", "exchange_seconds")


# ---- pure codec pieces (no communication) -------------------------------------------

def quantize(x: torch.Tensor, q: torch.Tensor, step: torch.Tensor, work: torch.Tensor) -> None:
    """Block-wise absmax int8 of ``x`` (blocks x b): ``step`` (blocks, fp32) = max|x| / 127
    per block, ``q`` (int8, like x) = round(x / step), so |x - q step| <= step / 2.

    ``work`` (like x, x's dtype; may be x itself) ends holding round(x / step) as floats.
    No clamp is needed: |x| / fl(max|x|/127) <= 127 (1 + 2^-23) < 127.5, since the step
    is at least the smallest normal float32 (a subnormal step would lose that bound;
    below it the block's values are < 127 x 1.2e-38 and q s still within s/2 of them):
    an all-zero block gets that step and q 0. Every large operation has one dtype
    (torch's mixed-dtype kernels are ten times slower on CPU: docs/compression.md).
    """
    hi = torch.amax(x, dim=1)
    lo = torch.amin(x, dim=1)
    torch.maximum(hi, lo.neg_(), out=hi)
    step.copy_(hi).div_(127).clamp_(min=TINY)
    torch.div(x, step.to(x.dtype).unsqueeze(1), out=work)
    work.round_()
    q.copy_(work)


def dequantize(q: torch.Tensor, step: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out`` (blocks x b) <- q step, per block; returns ``out``."""
    out.copy_(q)
    return out.mul_(step.to(out.dtype).unsqueeze(1))


def topk(x: torch.Tensor, k: int, work: torch.Tensor, values: torch.Tensor,
         indices: torch.Tensor) -> None:
    """The ``k`` entries of largest |x|: ``values`` <- x[i], ``indices`` <- i (int64).
    ``work``: like x (holds |x|)."""
    torch.abs(x, out=work)
    torch.topk(work, k, sorted=False, out=(values, indices))
    torch.index_select(x, 0, indices, out=values)


# ---- the round ----------------------------------------------------------------------------

class _Pending:
    """What :meth:`CompressedMean.start` posted: handles with test()/wait() and ``done``."""
    __slots__ = ("handles",)

    def __init__(self, *handles):
        self.handles = handles

    @property
    def done(self) -> bool:
        return all(h.done for h in self.handles)

    def test(self) -> bool:
        return all([h.test() for h in self.handles])

    def wait(self) -> None:
        for h in self.handles:
            h.wait()


class CompressedMean:
    """buf <- (1/P) sum_r D(C(buf_r + e_r)) over the P ranks of ``comm``, with error feedback
    e_r <- (buf_r + e_r) - D(C(buf_r + e_r)) (local); see the module docstring.

    Args:
        comm: a :class:`~mpisgd.comm.Comm` (bytes and MPI seconds count there too).
        buf: 1-D contiguous float32 or float64 tensor (a view into a flat buffer),
            written in place with the mean; between :meth:`start` and :meth:`finish`
            its contents are undefined.
        spec: ``fp16``, ``bf16``, ``int8``, ``topk:RATIO`` or ``powersgd:RANK``.
        shapes: ``[(offset, shape), ...]`` of the tensors packed in ``buf`` (powersgd's
            matrices; other formats ignore it); ``None``: one 1-D vector.
        error_feedback: keep the residual (default True); False: e_r = 0 always.

    Counters: ``bytes`` (what this object's exchanges counted on ``comm``), ``dense_bytes``
    (what a dense Allreduce of ``buf`` would have, 2 (P-1)/P ``buf.nbytes`` per round),
    ``rounds``, ``codec_seconds`` (compress, decompress, reduce), ``exchange_seconds``
    (MPI calls and waits); from :meth:`calibrate` (``None`` before), ``dense_seconds``
    (one dense Allreduce) and ``quiet_seconds`` (one compressed exchange, measured alike).

    The buffers are allocated once, on ``buf.device``; nothing is allocated per round
    beyond small per-block tensors (and PowerSGD's QR).
    """

    def __init__(self, comm, buf: torch.Tensor, spec: str, shapes=None,
                 error_feedback: bool = True):
        fmt, arg = parse_compress(spec)
        if fmt == "none":
            raise ValueError("compress none is the plain mean: use Comm.iallreduce(average=True)")
        if buf.dim() != 1 or not buf.is_contiguous() or not buf.numel():
            raise ValueError("buf must be a non-empty 1-D contiguous tensor")
        if buf.dtype not in REDUCIBLE:
            raise ValueError(f"buf must be float32 or float64, got {buf.dtype}")
        self.comm, self.buf, self.spec, self.format = comm, buf, spec, fmt
        self.residual = torch.zeros_like(buf) if error_feedback else None
        self.bytes = self.dense_bytes = 0.0
        self.rounds = 0
        self.exchange_seconds = 0.0
        self._codec_host = 0.0                   # host-timed codec seconds (the CPU)
        self._spans = Spans() if buf.is_cuda else None   # device-timed ones (CUDA events)
        self._opened = None                      # the open codec span's start
        self.dense_seconds = self.quiet_seconds = None
        self.shapes = shapes
        self._codec = _CODECS[fmt](self, arg, shapes)

    # ---- one round --------------------------------------------------

    @property
    def codec_seconds(self) -> float:
        """Seconds of compress, decompress and reduce work: between the exchanges, on the
        host's clock on the CPU, on the device's (CUDA events, summed here, waiting for
        what is still queued) on a GPU, where the host only launches the kernels."""
        return self._codec_host + (self._spans.collect(block=True) if self._spans else 0.0)

    @codec_seconds.setter
    def codec_seconds(self, value: float) -> None:       # a checkpoint's counter
        self._codec_host = value
        if self._spans is not None:
            self._spans.collect(block=True)
            self._spans.seconds = 0.0

    def _open_codec(self) -> None:
        self._opened = Spans.mark(self._stream()) if self._spans else time.perf_counter()

    def _close_codec(self) -> None:
        if self._spans is not None:
            self._spans.close(self._opened, self._stream())
        else:
            self._codec_host += time.perf_counter() - self._opened

    def _stream(self):
        return torch.cuda.current_stream(self.buf.device)

    def start(self):
        """Compress buf + residual (the residual updated) and post the first exchange;
        returns what :meth:`finish` completes."""
        self._open_codec()
        acc = self.buf if self.residual is None else self.residual.add_(self.buf)
        pending = self._codec.start(acc)
        self._close_codec()
        return pending

    def finish(self, pending) -> None:
        """Complete the exchange that :meth:`start` posted: buf <- the mean."""
        self._open_codec()
        self._codec.finish(pending)
        self._close_codec()
        self.rounds += 1
        self.dense_bytes += 2.0 * (self.comm.size - 1) / self.comm.size * \
            self.buf.numel() * self.buf.element_size()

    def run(self) -> None:
        """One blocking round."""
        self.finish(self.start())

    def _exchange(self, post):
        """Run ``post()`` (MPI posts or waits), counting its seconds and bytes here; the
        codec's time stops meanwhile."""
        self._close_codec()
        t0, b0 = time.perf_counter(), self.comm.bytes_sent
        out = post()
        self.exchange_seconds += time.perf_counter() - t0
        self.bytes += self.comm.bytes_sent - b0
        self._open_codec()
        return out

    def _wait(self, pending) -> None:
        self._exchange(pending.wait)

    # ---- measurement and checkpoints ----------------------------------

    def calibrate(self, telemetry, trials: int = 3) -> tuple[float, float]:
        """Measure, on ``telemetry`` (an uncounted :class:`~mpisgd.comm.Comm`; collective),
        one dense Allreduce of a scratch copy of ``buf`` and the exchange part of one
        compressed round of it (a twin with its own buffers: this one's residual is
        untouched), each after a barrier: one warm-up, then the median of ``trials``.

        Measured alike, the two say what the wire saves; the exchange seconds of the
        run itself also hold the waits for slower ranks, which a dense Allreduce would
        wait as well. Sets and returns (:attr:`dense_seconds`, :attr:`quiet_seconds`)."""
        scratch = torch.ones_like(self.buf)
        twin = CompressedMean(telemetry, scratch.clone(), self.spec, self.shapes,
                              self.residual is not None)
        dense, quiet = [], []
        for t in range(trials + 1):
            telemetry.barrier()
            t0 = time.perf_counter()
            telemetry.allreduce(scratch)
            d = time.perf_counter() - t0
            telemetry.barrier()
            e0 = twin.exchange_seconds
            twin.run()
            if t:
                dense.append(d)
                quiet.append(twin.exchange_seconds - e0)
        self.dense_seconds, self.quiet_seconds = statistics.median(dense), statistics.median(quiet)
        return self.dense_seconds, self.quiet_seconds

    def state_dict(self) -> dict:
        """The residual, PowerSGD's Q and the counters (tensors and numbers)."""
        state = {"counters": {k: getattr(self, k) for k in COUNTERS}}
        if self.residual is not None:
            state["residual"] = self.residual
        state.update(self._codec.state_dict())
        return state

    def load_state_dict(self, state: dict) -> None:
        for k, v in state["counters"].items():
            setattr(self, k, v)
        if self.residual is not None:
            self.residual.copy_(state["residual"])
        self._codec.load_state_dict(state)


# ---- formats ------------------------------------------------------------------------------

class _Codec:
    """A format's exchange: ``start(acc) -> pending``, ``finish(pending)`` (buf <- mean)."""

    def __init__(self, cm: CompressedMean, arg, shapes):
        self.cm, self.comm, self.buf = cm, cm.comm, cm.buf
        self.P, self.n = cm.comm.size, cm.buf.numel()
        self.like = dict(dtype=cm.buf.dtype, device=cm.buf.device)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class _Chunked(_Codec):
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
        return _Pending(*handles)

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
            got = _Pending(
                self.cm._exchange(lambda: self.comm.iallgather(self.gsend, self.grecv)),
                self.cm._exchange(lambda: self.comm.iallgather(self.gstep, self.grstep)))
        else:
            self.gsend.copy_(red)
            got = _Pending(self.cm._exchange(lambda: self.comm.iallgather(self.gsend, self.grecv)))
        self.cm._wait(got)
        out = self.buf if self.work is None else self.tmp
        self._decode(self.grecv.view(-1), self.grstep if self.int8 else None, out)
        if out is not self.buf:
            self.buf.copy_(out[:self.n])


class _TopK(_Codec):
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
        return _Pending(ex(lambda: self.comm.iallgather(self.values, self.rvalues)),
                        ex(lambda: self.comm.iallgather(self.index, self.rindex)))

    def finish(self, pending):
        self.cm._wait(pending)
        buf = self.buf
        buf.zero_()
        for r in range(self.P):        # rank order, no duplicate index within a rank:
            buf.index_add_(0, self.rindex[r], self.rvalues[r])   # deterministic everywhere
        buf.mul_(1.0 / self.P)


class _PowerSGD(_Codec):
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
        return _Pending(*handles)

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
            self.cm._wait(_Pending(self.cm._exchange(
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


_CODECS = {"fp16": _Chunked, "bf16": _Chunked, "int8": _Chunked, "topk": _TopK,
           "powersgd": _PowerSGD}


# ---- reporting ----------------------------------------------------------------------------

def series(compressors) -> dict:
    """The counters of ``compressors`` summed, as run-record figures ``compress/...``:
    bytes, dense_bytes, rounds (exchanges), codec_seconds, exchange_seconds, and from
    :meth:`CompressedMean.calibrate` dense_seconds and quiet_seconds (each one's
    measured time of a dense Allreduce and of its compressed exchange, times its rounds;
    0 if not calibrated)."""
    out = {f"compress/{k}": float(sum(getattr(c, k) for c in compressors)) for k in COUNTERS}
    for k in ("dense_seconds", "quiet_seconds"):
        out[f"compress/{k}"] = float(sum((getattr(c, k) or 0.0) * c.rounds for c in compressors))
    return out


def paid(figures, compress: str = "") -> str | None:
    """One sentence on whether compression paid, from :func:`series`'s figures (numbers, or
    one per worker as a run record holds them: averaged). ``None`` with no round.

    It paid when the compressed exchange plus the codec's seconds (compressing,
    decoding, reducing, as spent in the run) are below the dense Allreduce's, the two
    exchanges measured alike (:meth:`CompressedMean.calibrate`) over the run's rounds::

        compression int8: 0.26x the bytes; exchange 0.41 s + codec 0.12 s against
        0.98 s dense (measured alike; 1.20 s of exchange and waits in the run): paid,
        0.45 s saved
    """
    def value(name):
        v = figures.get(f"compress/{name}", 0.0)
        if hasattr(v, "__len__"):
            v = [float(x) for x in v]
            return sum(v) / len(v) if v else 0.0
        return float(v)

    if not value("rounds"):
        return None
    dense_bytes = value("dense_bytes")
    ratio = value("bytes") / dense_bytes if dense_bytes else float("nan")
    run, codec = value("exchange_seconds"), value("codec_seconds")
    quiet, dense = value("quiet_seconds"), value("dense_seconds")
    head = f"compression {compress}: {ratio:.2f}x the bytes; "
    if not dense:
        return head + f"exchange {run:.2f} s + codec {codec:.2f} s (dense time not measured)"
    saved = dense - quiet - codec
    verdict = f"paid, {saved:.2f} s saved" if saved > 0 else f"did not pay, {-saved:.2f} s lost"
    return (head + f"exchange {quiet:.2f} s + codec {codec:.2f} s against {dense:.2f} s dense "
            f"(measured alike; {run:.2f} s of exchange and waits in the run): {verdict}")
