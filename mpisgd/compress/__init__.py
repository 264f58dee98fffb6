"""Compressed averaging with error feedback: the mean of a flat buffer over ranks, sent small.

Rank r holds a buffer buf_r and a residual e_r (zero at first, local). A
round of :class:`CompressedMean` computes, with C a compressor and D its
decoder,

    a_r = buf_r + e_r,    buf <- (1/P) sum_r D(C(a_r)),    e_r <- a_r - D(C(a_r))

so what one round's compression drops is sent in a later round (error
feedback: Seide et al. 2014; Karimireddy et al. 2019, EF-SGD; Vogels et al.
2019, PowerSGD). Every rank ends with the same ``buf``: each decodes the
same received data. Formats (``spec``, read by
:func:`~mpisgd.compress.codecs.parse`):

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
    print(paid(series([mean]), "int8"))     # mpisgd.app.report.paid

The package: :mod:`.codecs` (the pure pieces and the format names, no
communication), :mod:`.exchange` (each format's exchange pattern: chunked
Alltoall and Allgather, sparse Allgather, factor Allreduce) and :mod:`.mean`
(:class:`CompressedMean`: error feedback, counters, calibration).
"""
from __future__ import annotations

from .codecs import BLOCK, FORMATS, TINY, dequantize, parse, quantize, topk
from .mean import COUNTERS, CompressedMean, series

__all__ = ["BLOCK", "COUNTERS", "CompressedMean", "FORMATS", "TINY", "dequantize", "parse",
           "quantize", "series", "topk"]
