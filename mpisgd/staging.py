"""The device boundary: when MPI may touch a CUDA tensor, and the host copies that stand in for it.

MPI has no streams: it reads or writes a buffer at some moment after the host
posts an operation. A CUDA tensor is produced and consumed by kernels queued
on a stream, asynchronously to the host. :class:`DeviceBoundary` orders the
two with CUDA events, never by synchronising the stream that computes:

* **ready**: an event recorded on the tensor's current (compute) stream when
  the operation is created; MPI reads a device buffer only once it has
  completed (a CUDA-aware MPI), and staging copies start only after it.
* **staging** (an MPI that is not CUDA-aware): the tensor's bytes go through
  a pinned host buffer, allocated once per tensor and reused. Device-to-host
  copies run on a dedicated side stream after ``ready``; the operation is
  posted once the copy's event has completed. Results come back host-to-device
  on the side stream, and the compute stream *waits on the copy's event*
  (``wait_event``) instead of the host waiting for it: the compute stream is
  held for at most the copy, and only where it uses the result.

Copies on CPU tensors (the staging path forced with ``MPISGD_STAGING=always``,
which tests it without a GPU) are plain synchronous copies, with no events.

The side stream's copy seconds are measured with CUDA timing events
(:meth:`DeviceBoundary.copy_seconds`), never with host timers around
asynchronous copies.
"""
from __future__ import annotations

import torch


def upload(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor (weights of W, say) on ``device`` without stalling its stream:
    through pinned memory, asynchronously (a plain ``.to("cuda")`` from pageable memory
    waits for the stream to drain)."""
    if torch.device(device).type != "cuda":
        return t.to(device)
    return t.contiguous().pin_memory().to(device, non_blocking=True)


class Spans:
    """Seconds of device work between pairs of CUDA timing events, summed without a sync.

    :meth:`mark` records a timing event on a stream; :meth:`close` records the pair's end
    and keeps the pair; :meth:`collect` sums the pairs whose end has run (all of them,
    waiting, with ``block``), calling each pair's ``then(seconds)``. The interval between
    two events on one stream is the time that stream took for the work queued between
    them (a gap where it waited for the host included): the device's own clock, where
    a host timer would measure only the launches.
    """

    def __init__(self):
        self.pairs: list[tuple] = []         # (start, end, then) not yet summed
        self.seconds = 0.0

    @staticmethod
    def mark(stream):
        event = torch.cuda.Event(enable_timing=True)
        event.record(stream)
        return event

    def close(self, start, stream, then=None):
        """End the span that ``start`` opened, on ``stream``; returns its end event."""
        end = self.mark(stream)
        self.pairs.append((start, end, then))
        if len(self.pairs) > 256:              # sum what has completed; keep the list short
            self.collect()
        return end

    def collect(self, block: bool = False) -> float:
        """Sum the spans that have run (every one, waiting for it, with ``block``); returns
        the total so far."""
        pending = []
        for start, end, then in self.pairs:
            if block:
                end.synchronize()
            elif not end.query():
                pending.append((start, end, then))
                continue
            seconds = start.elapsed_time(end) / 1000.0
            self.seconds += seconds
            if then is not None:
                then(seconds)
        self.pairs = pending
        return self.seconds


class DeviceBoundary:
    """Pinned host buffers, one side stream per device, and the events that order them.

    Args:
        cache: how many host buffers to keep for reuse (oldest out first; a
            pending operation keeps its own alive).
    """

    def __init__(self, cache: int = 64):
        self.cache = cache
        self._buffers: dict[tuple, torch.Tensor] = {}
        self._streams: dict[torch.device, object] = {}   # CUDA objects made on first use only
        self.spans = Spans()                               # the copies' timing events

    def twin(self) -> "DeviceBoundary":
        """A boundary sharing these host buffers and side streams, timing its own copies."""
        other = DeviceBoundary(self.cache)
        other._buffers, other._streams = self._buffers, self._streams
        return other

    def host_buffer(self, t: torch.Tensor) -> torch.Tensor:
        """The host buffer that stands in for ``t``: pinned for CUDA tensors, 1-D, reused."""
        key = (t.data_ptr(), t.numel(), t.dtype, str(t.device))
        buf = self._buffers.pop(key, None)
        if buf is None:
            buf = torch.empty(t.numel(), dtype=t.dtype, pin_memory=t.is_cuda)
            while len(self._buffers) >= self.cache:
                self._buffers.pop(next(iter(self._buffers)))
        self._buffers[key] = buf     # most recently used last
        return buf

    def side_stream(self, device: torch.device):
        """The stream that carries this device's staging copies (made on first use)."""
        stream = self._streams.get(device)
        if stream is None:
            stream = self._streams[device] = torch.cuda.Stream(device)
        return stream

    @staticmethod
    def ready(t: torch.Tensor):
        """An event on ``t``'s current stream: what is queued so far (``t``'s producers) is done
        once it completes. ``None`` for a CPU tensor."""
        if not t.is_cuda:
            return None
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(t.device))
        return event

    def fence(self, t: torch.Tensor):
        """An event after the copies queued so far on ``t``'s side stream: an operation that
        lets MPI write ``t``'s host buffer waits for it, so that no copy still reading that
        buffer is overtaken. ``None`` for a CPU tensor or before any copy."""
        stream = self._streams.get(t.device) if t.is_cuda else None
        if stream is None:
            return None
        event = torch.cuda.Event()
        event.record(stream)
        return event

    def to_host(self, t: torch.Tensor, host: torch.Tensor, after=None):
        """Copy ``t`` into ``host``: on the side stream after event ``after`` for a CUDA
        tensor (returns the copy's event), synchronously for a CPU one (returns ``None``)."""
        if not t.is_cuda:
            host.copy_(t.reshape(-1))
            return None
        stream = self.side_stream(t.device)
        with torch.cuda.stream(stream):
            if after is not None:
                stream.wait_event(after)
            start = Spans.mark(stream)
            host.copy_(t.reshape(-1), non_blocking=True)
            t.record_stream(stream)          # the allocator must not reuse t before the copy ran
            return self.spans.close(start, stream)

    def to_device(self, host: torch.Tensor, t: torch.Tensor, after=None) -> None:
        """Copy ``host`` back into ``t``. For a CUDA tensor: on the side stream, after event
        ``after`` (what read ``t``'s old contents), and ``t``'s current stream waits on the
        copy, so that later kernels see the result while the host goes on."""
        if not t.is_cuda:
            t.reshape(-1).copy_(host)
            return
        stream = self.side_stream(t.device)
        with torch.cuda.stream(stream):
            if after is not None:
                stream.wait_event(after)
            start = Spans.mark(stream)
            t.reshape(-1).copy_(host, non_blocking=True)
            t.record_stream(stream)
            done = self.spans.close(start, stream)
        torch.cuda.current_stream(t.device).wait_event(done)

    def route(self, tensors, access, staged, arrived=None):
        """How ``tensors`` reach one MPI operation: ``(views, gate, done)``.

        ``views``: what MPI gets (the tensor, or its host buffer where ``staged``);
        ``gate``: the events its post waits for; ``done``: the copy back of what MPI
        wrote into host buffers, on completion (``None``: nothing to copy). ``access``
        per tensor: ``True`` (MPI only reads it), ``False`` (reads and writes) or
        ``"w"`` (only writes it: a receive, not copied out first; ``arrived()`` the
        bytes that came, when a message may be shorter than its buffer).
        """
        views, gate, back = [], [], []
        for t, a, stage in zip(tensors, access, staged):
            ready = self.ready(t)
            if stage:
                host = self.host_buffer(t)
                if a != "w":
                    gate.append(self.to_host(t, host, after=ready))
                else:                              # MPI will write the host buffer: not before
                    gate.append(self.fence(t))     # earlier copies out of it are done
                views.append(host)
                if a is not True:                  # only what MPI writes comes back
                    back.append((t, host, ready))
            else:
                views.append(t)
                gate.append(ready)                 # MPI touches the device memory itself

        def done():
            for t, host, ready in back:
                n = arrived() if arrived is not None else None
                if n is None:
                    self.to_device(host, t, after=ready)
                elif n:                            # a receive: only the bytes that arrived
                    self.to_device(host.view(torch.uint8)[:n],
                                   t.reshape(-1).view(torch.uint8)[:n], after=ready)
        return views, gate, done if back else None

    def copy_seconds(self, block: bool = True) -> float:
        """Seconds the side streams spent copying so far (CUDA timing events).

        ``block``: wait for copies still in flight (at a log point); otherwise
        only completed ones are summed.
        """
        return self.spans.collect(block)
