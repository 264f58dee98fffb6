"""Compressed means with error feedback (--compress; mpisgd/compress.py), under mpiexec.

* every format's mean equals the dense one within its bound (fp16 2^-11, bf16 2^-8
  relative per rounding; int8 a block's max / 254 per quantization; top-k with ratio 1
  and PowerSGD at full rank exactly), and every rank holds the same result;
* the bytes are exact: fp16 and bf16 1/2 of float32's, int8 1/4 plus its fp32 steps;
* top-k with error feedback converges on the quadratic sum_r 0.5 |x - b_r|^2,
  b_r = (+-10, 1), where top-k without it stalls at x_1 = 0 for ever;
* sync SGD with compressed buckets and local SGD with compressed pseudo-gradients stay
  within the format's bound of the dense runs, replicas identical; a checkpoint carries
  the residual (the continuation is identical);
* the run's figures (compress/*) feed paid()'s sentence.
"""
import math

import numpy as np
import pytest
import torch

from mpisgd.comm import Comm
from mpisgd.app.report import paid
from mpisgd.compress import BLOCK, CompressedMean, series
from helpers import D, classifier, classifier_batch, classifier_trace, regression_grad, \
    regression_loss, regression_run

HALF = {"fp16": 2.0 ** -11, "bf16": 2.0 ** -8}


def rank_buffer(rank: int, n: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(101 + rank)
    x = torch.randn(n, generator=g, dtype=dtype)
    return x * torch.logspace(-2, 2, n, dtype=dtype)        # every scale in one buffer


def all_buffers(size: int, n: int, dtype=torch.float64) -> torch.Tensor:
    return torch.stack([rank_buffer(r, n, dtype) for r in range(size)])


def same_everywhere(c: Comm, t: torch.Tensor) -> bool:
    return torch.equal(t, c.mpi.bcast(t.clone(), root=0))


def block_max(x: torch.Tensor, n: int, size: int) -> torch.Tensor:
    """Per element, the max |x| of its int8 block (the layout of compress._Chunked)."""
    chunk = -(-n // size)
    nb = -(-chunk // BLOCK)
    b = -(-chunk // nb)
    padded = torch.zeros(size * nb * b, dtype=x.dtype)
    padded[:n] = x.abs()
    return padded.view(-1, b).amax(1, keepdim=True).expand(-1, b).reshape(-1)[:n]


@pytest.mark.parametrize("fmt", ["fp16", "bf16", "int8"])
@pytest.mark.parametrize("n", [4 * 1024, 3001])         # a multiple of P and blocks; padded
def test_chunked_formats_are_the_mean_within_their_bound(comm, fmt, n):
    c = Comm(comm)
    every = all_buffers(c.size, n)
    mean = every.mean(0)
    buf = every[c.rank].clone()
    cm = CompressedMean(c, buf, fmt, error_feedback=False)
    cm.run()
    assert same_everywhere(c, buf)
    err = (buf - mean).abs()
    if fmt in HALF:         # a_r rounded, then the chunk's mean rounded
        bound = HALF[fmt] * (every.abs().mean(0) + mean.abs()) * (1 + 1e-6)
    else:                   # s_r / 2 per rank, then the mean's s / 2 (fp32 steps)
        per_rank = torch.stack([block_max(every[r], n, c.size) for r in range(c.size)]).mean(0)
        bound = (per_rank + block_max(mean, n, c.size)) / 254 * (1 + 1e-5)
    assert (err <= bound).all(), float((err - bound).max())
    assert err.max() > 0                     # lossy indeed: the bound is what is tested


def test_topk_ratio_one_and_full_rank_powersgd_are_exact(comm):
    c = Comm(comm)
    shapes = [(0, (6, 4)), (24, (5,)), (29, (3, 2, 2))]      # two matrices, one vector
    n = 41
    every = all_buffers(c.size, n)
    for spec in ("topk:1", "powersgd:4"):
        buf = every[c.rank].clone()
        CompressedMean(c, buf, spec, shapes, error_feedback=True).run()
        assert torch.allclose(buf, every.mean(0), rtol=1e-10, atol=1e-12), spec
        assert same_everywhere(c, buf)


@pytest.mark.mpi(min_size=2)
def test_powersgd_low_rank_keeps_the_residual_and_the_vectors_exact(comm):
    c = Comm(comm)
    shapes = [(0, (8, 8)), (64, (7,))]
    every = all_buffers(c.size, 71)
    buf = every[c.rank].clone()
    cm = CompressedMean(c, buf, "powersgd:1", shapes)
    cm.run()
    mean = every.mean(0)
    assert torch.allclose(buf[64:], mean[64:], rtol=1e-12)          # 1-D: averaged exactly
    assert torch.equal(cm.residual[64:], torch.zeros(7, dtype=torch.float64))
    approx = buf[:64].view(8, 8)
    assert torch.linalg.matrix_rank(approx) == 1
    assert torch.allclose(cm.residual[:64] + buf[:64], every[c.rank][:64], rtol=1e-12)
    assert same_everywhere(c, buf)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("fmt, extra_steps", [("fp16", 0), ("bf16", 0), ("int8", 1)])
def test_bytes_are_exact(comm, fmt, extra_steps):
    c = Comm(comm)
    P, n = c.size, c.size * BLOCK * 2          # no padding: 2 blocks per chunk
    buf = torch.zeros(n, dtype=torch.float32)
    cm = CompressedMean(c, buf, fmt)
    before = c.bytes_sent
    cm.run()
    cm.run()
    dense = 2 * 2 * (P - 1) / P * n * 4          # two rounds of the dense Allreduce
    assert cm.dense_bytes == dense
    assert cm.bytes == c.bytes_sent - before
    if fmt in HALF:
        assert cm.bytes == dense / 2
    else:                                        # 1/4, plus 2 (P-1) fp32 steps per block
        assert cm.bytes == dense / 4 + 2 * 2 * (P - 1) * 2 * 4
    figures = series([cm])
    assert figures["compress/rounds"] == 2 and figures["compress/bytes"] == cm.bytes


def test_fp16_clamps_and_feeds_the_excess_back(comm):
    """|a| > 65504 is sent as +-65504, never inf; the excess stays in the residual."""
    c = Comm(comm)
    buf = torch.tensor([1e5, 1.0, -2.0, 3.0] * c.size)
    cm = CompressedMean(c, buf, "fp16")
    cm.run()
    assert torch.isfinite(buf).all() and buf[0] == 65504.0
    assert cm.residual[0] == 1e5 - 65504.0
    buf.zero_()
    cm.run()                                          # the excess goes out next round
    assert torch.isfinite(buf).all() and torch.isfinite(cm.residual).all()
    assert buf[0] == pytest.approx(1e5 - 65504.0, rel=2 ** -10)


def quadratic_topk(c: Comm, error_feedback: bool, steps=600, eta=0.02) -> torch.Tensor:
    """Gradient descent on sum_r 0.5 |x - b_r|^2, b_r = (+-10, 1), the gradient's mean
    through top-1 of 2: rank r's first coordinate always dominates its own gradient."""
    b = torch.tensor([10.0 if c.rank % 2 == 0 else -10.0, 1.0], dtype=torch.float64)
    x, grad = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    cm = CompressedMean(c, grad, "topk:0.5", error_feedback=error_feedback)
    for _ in range(steps):
        torch.sub(x, b, out=grad)
        cm.run()
        x -= eta * grad
    return x


@pytest.mark.mpi(min_size=2)
def test_topk_with_error_feedback_converges_where_without_it_stalls(comm):
    c = Comm(comm)
    if c.size < 2:
        pytest.skip("one rank: its own top-1 reaches every coordinate")
    target = torch.tensor([sum(10.0 if r % 2 == 0 else -10.0 for r in range(c.size)) / c.size,
                           1.0], dtype=torch.float64)
    stalled = quadratic_topk(c, error_feedback=False)
    assert stalled[1] == 0.0                              # x_1 never sent
    assert abs(stalled[0] - target[0]) < 1e-3
    fed = quadratic_topk(c, error_feedback=True)
    # within the amplitude of a release of the residual, eta |b_0| = 0.2 (0.04 measured)
    assert abs(fed[1] - target[1]) < 0.1
    assert abs(fed[0] - target[0]) < 1e-3


def sync_run(comm, steps, **options):
    """sync SGD on the regression problem; the trace of the parameters."""
    return regression_run("sync", torch.linspace(-1.0, 1.0, D, dtype=torch.float64), steps,
                          comm, 0.05, **options)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("fmt, rtol", [("fp16", 1e-3), ("bf16", 1e-2), ("int8", 2e-2),
                                       ("powersgd:1", None)])
def test_sync_with_compressed_buckets(comm, fmt, rtol):
    dense, want = sync_run(comm, 8)
    algo, got = sync_run(comm, 8, compress=fmt)
    assert same_everywhere(algo.comm, algo.flat.data)
    if rtol is not None:
        for k in range(8):
            assert torch.allclose(got[k], want[k], rtol=rtol, atol=rtol), k
    figures = algo.worker_series()
    assert figures["compress/rounds"] == 8           # one bucket, one round per step
    assert figures["compress/dense_seconds"] > 0 and figures["compress/quiet_seconds"] > 0
    assert paid(figures, fmt).startswith(f"compression {fmt}: ")


@pytest.mark.mpi(min_size=2)
def test_sync_checkpoint_carries_the_residual(comm):
    steps, stop = 9, 4
    _, want = sync_run(comm, steps, compress="topk:0.34")
    first, _ = sync_run(comm, stop, compress="topk:0.34")
    assert first.mean.compressors[0].residual.abs().sum() > 0
    state = first.state_dict()
    second, _ = sync_run(comm, 0, compress="topk:0.34")
    second.load_state_dict(state)
    for step in range(stop, steps):
        second.optimizer.zero_grad()
        regression_loss(second.model, comm.Get_rank(), step).backward()
        second.step()
        assert torch.equal(second.flat.data, want[step]), step


def int8_mean(A: np.ndarray, residual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The int8 compressed mean of the rows of A (P x n) with error feedback, written out
    from docs/compression.md: each rank's a_r = A_r + e_r, padded to P chunks of nb
    blocks of b <= BLOCK; per block the step s = fl32(fl32(max |a|) / 127) and
    q = round(a / s) (half to even), e_r <- a_r - q s; the owner of a chunk sums the
    ranks' q s and takes 1/P of it, quantizes that the same way, and every rank decodes.
    Returns (the mean, the new residuals)."""
    P, n = A.shape
    chunk = -(-n // P)
    nb = -(-chunk // BLOCK)
    b = -(-chunk // nb)
    N = P * nb * b
    a = np.zeros((P, N))
    a[:, :n] = A + residual

    def quantized(x):                   # rows of blocks: (q, s per block)
        blocks = x.reshape(-1, b)
        s = np.maximum(np.abs(blocks).max(1).astype(np.float32) / np.float32(127),
                       np.finfo(np.float32).tiny)
        return np.round(blocks / s.astype(np.float64)[:, None]), s

    decoded = np.zeros((P, N))
    for r in range(P):
        q, s = quantized(a[r])
        decoded[r] = (q * s.astype(np.float64)[:, None]).reshape(-1)
    new_residual = (a - decoded)[:, :n]
    total = decoded[0].copy()
    for r in range(1, P):
        total += decoded[r]
    q, s = quantized(total * (1.0 / P))
    return (q * s.astype(np.float64)[:, None]).reshape(-1)[:n], new_residual


def regression_grads(X: np.ndarray, k: int) -> np.ndarray:
    """Rows: worker r's gradient at X[r] in step k (the helpers' regression problem)."""
    return regression_grad(k, torch.from_numpy(X.T.copy())).numpy().T


@pytest.mark.mpi(min_size=2)
def test_sync_int8_equals_the_codec_written_out(comm):
    """sync with int8 buckets against int8_mean above, every step: equal to rounding, so a
    step of max/127 x 1.1 (or any other change of the codec) fails."""
    steps, eta = 8, 0.05
    algo, got = sync_run(comm, steps, compress="int8")
    P = comm.size
    x = np.linspace(-1.0, 1.0, D)
    residual = np.zeros((P, D))
    for k in range(steps):
        mean, residual = int8_mean(regression_grads(np.tile(x, (P, 1)), k), residual)
        x = x - eta * mean
        np.testing.assert_allclose(got[k].numpy(), x, rtol=1e-13, atol=1e-15, err_msg=str(k))


def topk_mean(A: np.ndarray, residual: np.ndarray, ratio: float):
    """top-k's mean with error feedback, written out: a_r = A_r + e_r; rank r sends its
    k = ceil(ratio n) entries of largest |a_r|; the mean is 1/P of their sum, placed;
    e_r <- a_r with the sent entries zeroed."""
    P, n = A.shape
    k = max(1, math.ceil(ratio * n))
    a = A + residual
    mean = np.zeros(n)
    for r in range(P):
        sent = np.argsort(-np.abs(a[r]), kind="stable")[:k]
        mean[sent] += a[r, sent]
        a[r, sent] = 0.0
    return mean * (1.0 / P), a


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("fmt, mean_of", [("int8", int8_mean),
                                          ("topk:0.5", lambda A, e: topk_mean(A, e, 0.5))])
def test_local_pseudo_gradients_equal_the_codec_written_out(comm, fmt, mean_of):
    """local SGD, tau 4: at a round each worker's pseudo-gradient anchor - x_r goes through
    the codec written out above (with its residual); the anchor steps by the mean and
    every x becomes it."""
    steps, tau, eta = 12, 4, 0.05
    x0 = torch.linspace(-1.0, 1.0, D, dtype=torch.float64)
    _, got = regression_run("local", x0, steps, comm, eta, tau=tau, compress=fmt)
    P = comm.size
    X, anchor = np.tile(x0.numpy(), (P, 1)), x0.numpy().copy()
    residual = np.zeros((P, D))
    for k in range(steps):
        X = X - eta * regression_grads(X, k)
        if (k + 1) % tau == 0:
            mean, residual = mean_of(anchor[None, :] - X, residual)
            anchor = anchor - mean
            X = np.tile(anchor, (P, 1))
        np.testing.assert_allclose(got[k].numpy(), X[comm.rank], rtol=1e-13, atol=1e-15,
                                   err_msg=str(k))


@pytest.mark.mpi(min_size=2)
def test_sync_powersgd_equals_the_method_written_out(comm):
    """PowerSGD rank 1 on the classifier's two weight matrices (7 x 4, 3 x 7), the biases
    averaged exactly: per matrix P = mean_r M_r Q, P <- orth(P), Q <- mean_r M_r^T P, the
    mean P Q^T, M_r = G_r + e_r, e_r <- M_r - P Q^T; Q first drawn from the stream
    POWERSGD, then warm-started (Vogels et al. 2019)."""
    from mpisgd import streams
    steps, eta, P = 6, 0.1, comm.size
    got, _ = classifier_trace("sync", comm, steps, lr=eta, compress="powersgd:1")
    twin = classifier()
    params = list(twin.parameters())
    flat = torch.nn.utils.parameters_to_vector(params).detach()
    mats = [(0, 7, 4), (35, 3, 7)]                       # (offset, n, m) of the two weights
    rest = [(28, 35), (56, 59)]                          # the biases
    g = torch.Generator().manual_seed(streams.torch_seed(streams.POWERSGD))
    qs = torch.randn(4 + 7, generator=g, dtype=torch.float64)
    Q = [qs[:4].view(4, 1), qs[4:].view(7, 1)]
    residual = torch.zeros(P, len(flat), dtype=torch.float64)
    for step in range(steps):
        grads = []
        for r in range(P):
            torch.nn.utils.vector_to_parameters(flat, params)
            twin.zero_grad()
            x, y = classifier_batch(r, step)
            torch.nn.functional.cross_entropy(twin(x), y).backward()
            grads.append(torch.cat([p.grad.reshape(-1) for p in params]))
        acc = torch.stack(grads) + residual
        mean = torch.zeros_like(flat)
        for i, (o, n, m) in enumerate(mats):
            M = acc[:, o:o + n * m].reshape(P, n, m)
            Pm = torch.linalg.qr((M @ Q[i]).mean(0)).Q
            Q[i] = (M.transpose(1, 2) @ Pm).mean(0)
            approx = Pm @ Q[i].T
            mean[o:o + n * m] = approx.reshape(-1)
            residual[:, o:o + n * m] = (M - approx).reshape(P, -1)
        for a, b in rest:
            mean[a:b] = acc[:, a:b].mean(0)
            residual[:, a:b] = 0
        flat = flat - eta * mean
        assert torch.allclose(got[step], flat, rtol=1e-9, atol=1e-12), step


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("fmt", ["fp16", "int8", "topk:0.5"])
def test_local_with_compressed_pseudo_gradients(comm, fmt):
    x0 = torch.linspace(-1.0, 1.0, D, dtype=torch.float64)
    _, want = regression_run("local", x0, 12, comm, 0.05, tau=4)
    algo, got = regression_run("local", x0, 12, comm, 0.05, tau=4, compress=fmt)
    assert algo.rounds == 3
    if fmt != "topk:0.5":        # one round's progress rounded: the weights' error is tiny
        for k in (3, 7, 11):
            assert torch.allclose(got[k], want[k], rtol=1e-2, atol=1e-3), k
    algo.finish()
    assert same_everywhere(algo.comm, algo.flat.data)
    assert algo.worker_series()["compress/rounds"] == algo.rounds

