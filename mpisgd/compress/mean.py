"""CompressedMean: a mean over ranks sent compressed, with error feedback, counted and timed."""
from __future__ import annotations

import statistics
import time

import torch

from ..comm import REDUCIBLE, Handle, Handles
from ..staging import Spans
from .codecs import parse
from .exchange import EXCHANGES

COUNTERS = ("bytes", "dense_bytes", "rounds", "codec_seconds", "exchange_seconds")


class _Counted:
    """A first exchange in flight whose wait counts as its CompressedMean's exchange time."""
    __slots__ = ("cm", "pending")

    def __init__(self, cm: "CompressedMean", pending):
        self.cm, self.pending = cm, pending

    @property
    def done(self) -> bool:
        return self.pending.done

    def test(self) -> bool:
        return self.pending.test()

    def wait(self) -> None:
        self.cm._wait(self.pending)


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
        fmt, arg = parse(spec)
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
        self._codec = EXCHANGES[fmt](self, arg, shapes)

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
        self._opened = None

    def _stream(self):
        return torch.cuda.current_stream(self.buf.device)

    def start(self) -> Handles:
        """Compress buf + residual (the residual updated) and post the first exchange;
        returns its :class:`~mpisgd.comm.Handles`: ``test()`` and ``done`` follow the first
        exchange, ``wait()`` completes it, runs the second and leaves the mean in buf."""
        self._open_codec()
        acc = self.buf if self.residual is None else self.residual.add_(self.buf)
        first = self._codec.start(acc)
        self._close_codec()
        return Handle.all(_Counted(self, first), finish=lambda: self._complete(first))

    def _complete(self, first) -> None:
        self._open_codec()
        self._codec.finish(first)
        self._close_codec()
        self.rounds += 1
        self.dense_bytes += 2.0 * (self.comm.size - 1) / self.comm.size * \
            self.buf.numel() * self.buf.element_size()

    def finish(self, pending: Handles) -> None:
        """Complete what :meth:`start` posted: buf <- the mean."""
        pending.wait()

    def run(self) -> None:
        """One blocking round."""
        self.finish(self.start())

    def _exchange(self, post):
        """Run ``post()`` (MPI posts or waits), counting its seconds and bytes here; the
        codec's time stops meanwhile."""
        coding = self._opened is not None
        if coding:
            self._close_codec()
        t0, b0 = time.perf_counter(), self.comm.bytes_sent
        out = post()
        self.exchange_seconds += time.perf_counter() - t0
        self.bytes += self.comm.bytes_sent - b0
        if coding:
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
