"""Tensors as MPI buffers: datatypes, buffer specs, and the memory pending operations own.

:func:`spec` hands MPI a tensor's own memory
(``MPI.buffer.fromaddress(t.data_ptr(), nbytes)``): no copy, no pickling.
:class:`Claims` records the address spans each pending nonblocking operation
reads and writes, so that a new operation on memory still in flight is
refused instead of racing it: a write excludes everything, a read excludes
only writes (one buffer may go to many ranks at once).
"""
from __future__ import annotations

import torch

from ._mpi import MPI

_MPI_TYPES: dict = {}     # torch dtype -> MPI datatype, filled on first use (MPI loads lazily)

#: The dtypes MPI reductions sum.
REDUCIBLE = (torch.float32, torch.float64)


def mpi_type(dtype: torch.dtype):
    """The MPI datatype of ``dtype``, or ``None`` (half types travel as bytes)."""
    if not _MPI_TYPES:
        _MPI_TYPES.update({torch.float32: MPI.FLOAT, torch.float64: MPI.DOUBLE,
                           torch.int32: MPI.INT32_T, torch.int64: MPI.INT64_T,
                           torch.uint8: MPI.UINT8_T})
    return _MPI_TYPES.get(dtype)


def check_reducible(dtype: torch.dtype) -> None:
    """``ValueError`` unless MPI can sum tensors of ``dtype`` (float32, float64)."""
    if dtype not in REDUCIBLE:
        raise ValueError(f"parameters of dtype {str(dtype).replace('torch.', '')} cannot be "
                         "averaged with MPI reductions: keep the model in float32 or float64 "
                         "(use torch.autocast for lower-precision compute)")


def reduction(op, average: bool):
    """The MPI op of a reduction (default ``MPI.SUM``); a mean needs a sum."""
    op = MPI.SUM if op is None else op
    if average and op != MPI.SUM:
        raise ValueError("average=True goes with op=MPI.SUM")
    return op


def per_block(recv, send):
    """A gather's receive spec: mpi4py reads an explicit count as the count per block."""
    return [recv[0], send[1], recv[2]]


def _contiguous(t: torch.Tensor) -> None:
    if not t.is_contiguous():
        raise ValueError("MPI buffers must be contiguous tensors; call .contiguous() first")


def spec(t: torch.Tensor):
    """``[buffer, count, datatype]`` over the tensor's own memory (no copy)."""
    _contiguous(t)
    nbytes = t.numel() * t.element_size()
    mem = MPI.buffer.fromaddress(t.data_ptr() if nbytes else 0, nbytes)
    dtype = mpi_type(t.dtype)
    if dtype is None:   # half types: fine for point-to-point as raw bytes
        return [mem, nbytes, MPI.BYTE]
    return [mem, t.numel(), dtype]


class Claims:
    """The address spans pending operations own, by operation: ``writes`` (receives,
    in-place collectives) exclude everything; ``reads`` (sends) exclude only writes."""

    def __init__(self):
        self.writes: dict[int, list[tuple[int, int]]] = {}
        self.reads: dict[int, list[tuple[int, int]]] = {}

    def claim(self, t: torch.Tensor, read_only: bool = False) -> tuple[int, int]:
        """The address span of ``t``; refuses non-contiguous tensors and pending memory
        (a read, ``read_only``, may share memory with other pending reads)."""
        _contiguous(t)
        start = t.data_ptr()
        span = (start, start + t.numel() * t.element_size())
        owners = (self.writes,) if read_only else (self.writes, self.reads)
        for s, e in (sp for owner in owners for spans in owner.values() for sp in spans):
            if span[0] < e and s < span[1]:
                raise RuntimeError(
                    "this tensor's memory is still owned by a pending nonblocking MPI "
                    "operation; call wait() on its Handle before reusing the buffer")
        return span

    def own(self, handle, reads, writes) -> None:
        """Record the spans a pending ``handle`` reads and writes."""
        if reads:
            self.reads[id(handle)] = reads
        if writes:
            self.writes[id(handle)] = writes

    def release(self, handle) -> None:
        """``handle`` completed: its spans are free."""
        self.writes.pop(id(handle), None)
        self.reads.pop(id(handle), None)
