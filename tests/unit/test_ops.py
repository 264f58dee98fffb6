"""mpisgd.ops: the compiled kernels and their torch twins against float64 math; validation; the build.

Tolerances: the kernels compute in float (double for float64) and round once
per stored value, so a fused result is within one ulp of its storage type
(``rtol = eps``), plus the compute type's error on the inputs
(``8 eps_compute * sum |inputs|`` per element) and one subnormal ulp. The
torch twins round after every op: ``8 eps * sum |inputs|`` in the storage
type. A wrong term or sign shows at ``alpha * |x - c|``, far above either.
"""
import functools
import importlib
import os
import shutil

import pytest
import torch

from mpisgd import ops

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
LENGTHS = [0, 1, 7, 17, 1_000_003]                 # none a multiple of a vector width
LARGE = 4_194_319                                   # fused float32 only: the file stays fast
IMPLS = {"fused": (ops.elastic, ops.eamsgd_step, ops.triad),
         "reference": (ops.elastic_reference, ops.eamsgd_step_reference, ops.triad_reference)}
CASES = [pytest.param(impl, dtype, n, id=f"{impl}-{str(dtype)[6:]}-{n}")
         for impl, dtype, n in [(i, d, n) for i in IMPLS for d in DTYPES for n in LENGTHS]
         + [("fused", torch.float32, LARGE)]]
ALPHA, LR, DELTA = 0.3, 0.1, 0.9


@functools.lru_cache(maxsize=1)
def _normal_pool() -> torch.Tensor:
    return torch.randn(6, LARGE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def randn(k, n, dtype, device, seed=0):
    """``k`` standard-normal tensors of length ``n`` (rows ``seed..seed+k-1`` of one pool)."""
    return [row[:n].to(dtype=dtype, device=device, copy=True) for row in _normal_pool()[seed:seed + k]]


def f64(*ts):
    """float64 copies (``.double()`` would alias a float64 tensor that the kernel then updates)."""
    return [t.to(torch.float64, copy=True) for t in ts]


def assert_close(actual, expected, inputs, impl):
    """``actual`` (any dtype) within the module docstring's tolerance of float64 ``expected``.

    ``inputs``: the float64 inputs whose magnitudes bound the rounding errors.
    """
    eps = torch.finfo(actual.dtype).eps
    compute = torch.finfo(torch.float64 if actual.dtype == torch.float64 else torch.float32).eps
    bound = sum(t.abs() for t in inputs).mul_(8 * (compute if impl == "fused" else eps))
    bound.add_(expected.abs(), alpha=eps).add_(torch.finfo(actual.dtype).smallest_normal * eps)  # + a subnormal ulp
    err = actual.double().sub_(expected).abs_()
    bad = err > bound
    assert not bad.any(), (f"{int(bad.sum())} of {err.numel()} elements off, worst {err.max().item():.3g} "
                           f"({actual.dtype}, {impl})")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl, dtype, n", CASES)
@pytest.mark.parametrize("mode", ["overwrite", "accumulate", "out is c"])
def test_elastic(impl, n, dtype, device, mode):
    x, c, out = randn(3, n, dtype, device)
    x0, c0, out0 = f64(x, c, out)
    e = ALPHA * (x0 - c0)
    if mode == "out is c":
        out, out0 = c, c0
    IMPLS[impl][0](x, c, out, ALPHA, accumulate=mode != "overwrite")
    assert_close(x, x0 - e, (x0, c0), impl)
    assert_close(out, e if mode == "overwrite" else out0 + e, (x0, c0, out0), impl)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl, dtype, n", CASES)
@pytest.mark.parametrize("centre", [False, True])
def test_eamsgd_step(impl, n, dtype, device, centre):
    y, v, g, c, out = randn(5, n, dtype, device, seed=1)
    y0, v0, g0, c0 = f64(y, v, g, c)
    v1 = DELTA * v0 - LR * g0
    x = y0 - DELTA * v0                # the iteration's copy: elastic and momentum both from it
    e = ALPHA * (x - c0)
    if centre:
        IMPLS[impl][1](y, v, g, LR, DELTA, c, out, ALPHA)
        assert_close(out, e, (y0, v0, c0), impl)
        x = x - e
    else:
        IMPLS[impl][1](y, v, g, LR, DELTA)
    assert_close(v, v1, (v0, g0), impl)
    assert_close(y, x + v1 + DELTA * v1, (y0, v0, g0, c0), impl)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl, dtype, n", CASES)
def test_triad(impl, n, dtype, device):
    a, b, c = randn(3, n, dtype, device, seed=3)
    b0, c0 = f64(b, c)
    IMPLS[impl][2](a, b, c, 3.0)
    assert_close(a, b0 + 3.0 * c0, (b0, 3 * c0), impl)


@pytest.mark.parametrize("threads", [1, 2])
def test_the_openmp_branch_runs_and_agrees(threads):
    """Above 32768 elements the CPU kernels split the loop over torch's threads (OpenMP):
    on 2 threads that branch runs (the backend says so) and every kernel agrees with the
    float64 math. (A driver run used to leave torch at one thread for the tests after it.)"""
    if ops.backend("cpu") == "cpu: C++ (1 thread, built without OpenMP)" or \
            not ops.backend("cpu").startswith("cpu"):
        pytest.skip(f"no OpenMP kernels here: {ops.backend('cpu')}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert ops.backend("cpu") == f"cpu: C++/OpenMP ({threads} thread{'s' * (threads > 1)})"
        n = 1_000_003
        x, c, out = randn(3, n, torch.float32, "cpu")
        x0, c0 = f64(x, c)
        ops.elastic(x, c, out, ALPHA)
        assert_close(x, x0 - ALPHA * (x0 - c0), (x0, c0), "fused")
        a, b, c = randn(3, n, torch.float32, "cpu", seed=3)
        b0, c0 = f64(b, c)
        ops.triad(a, b, c, 3.0)
        assert_close(a, b0 + 3.0 * c0, (b0, 3 * c0), "fused")
    finally:
        torch.set_num_threads(before)


@CUDA
def test_a_cuda_kernel_that_fails_at_launch_falls_back_to_the_twin_once(monkeypatch):
    """A module built with a CUDA runtime newer than the driver fails at its first launch:
    one warning, the torch twin from then on, and the backend says why."""
    if not ops.backend("cuda").startswith("cuda"):
        pytest.skip(f"no compiled CUDA kernels: {ops.backend('cuda')}")

    def broken(*args):
        raise RuntimeError("mpisgd._ops: elastic: CUDA driver version is insufficient for "
                           "CUDA runtime version")
    monkeypatch.setattr(ops._ops, "elastic_cuda", broken)
    monkeypatch.setattr(ops, "_KERNELS", None)
    monkeypatch.setattr(ops, "_WHY_CUDA", None)
    x, c, out = randn(3, 1000, torch.float32, "cuda")
    x0, c0 = f64(x, c)
    with pytest.warns(RuntimeWarning, match="compiled CUDA kernels failed .*driver version"):
        ops.elastic(x, c, out, ALPHA)
    assert_close(x, x0 - ALPHA * (x0 - c0), (x0, c0), "reference")
    assert ops.backend("cuda").startswith("torch (the compiled CUDA kernels failed: ")


def test_a_driver_run_gives_back_the_callers_threads(tmp_path):
    from mpi4py import MPI

    from mpisgd.app import train
    from mpisgd.app.config import from_sources
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train.run(from_sources(None, dict(steps=2, threads=1, out=str(tmp_path / "r.h5"))),
                  MPI.COMM_SELF, quiet=True)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# ---- which path runs -------------------------------------------------------------------------

def test_compiled_module_is_built_where_it_can_be():
    """With cmake and g++ on PATH the install must have built mpisgd._ops (no silent fallback)."""
    if os.environ.get("MPISGD_REQUIRE_OPS") == "0":
        pytest.skip("MPISGD_REQUIRE_OPS=0")
    if not (shutil.which("cmake") and shutil.which("g++")):
        pytest.skip("no cmake or g++: the torch path is expected")
    assert ops._ops is not None, (
        f"cmake and g++ are on PATH but mpisgd._ops is missing ({ops._WHY}): reinstall with "
        "`make install` (or pip install pybind11; pip install --no-build-isolation -e .) and read "
        "its 'mpisgd:' line; MPISGD_REQUIRE_OPS=0 accepts the torch path")
    assert {"float32", "float64", "bfloat16"} <= set(ops._ops.CPU_DTYPES)


@pytest.mark.skipif(ops._ops is None or ops._torch_only(), reason="compiled kernels not in use")
@pytest.mark.parametrize("device", DEVICES)
def test_fused_functions_call_the_compiled_kernels(device, monkeypatch):
    def refuse(*args):
        raise AssertionError("took the torch path")
    for name in ("_elastic_torch", "_eamsgd_torch", "_triad_torch"):
        monkeypatch.setattr(ops, name, refuse)
    kind = torch.device(device).type
    assert ops.backend(device).startswith(f"{kind}: ")
    for dtype in ops._kernels()[kind]:
        t = randn(5, 100, dtype, device)
        ops.elastic(*t[:3], ALPHA)
        ops.eamsgd_step(*t[:3], LR, DELTA, *t[3:], ALPHA)
        ops.triad(*t[:3], 2.0)


def test_without_kernels_the_fused_functions_run_the_reference(monkeypatch):
    monkeypatch.setattr(ops, "_KERNELS", {})
    x, c, out = randn(3, 1000, torch.float32, "cpu")
    x2, c2, out2 = (t.clone() for t in (x, c, out))
    ops.elastic(x, c, out, ALPHA)
    ops.elastic_reference(x2, c2, out2, ALPHA)
    assert torch.equal(x, x2) and torch.equal(out, out2)


@pytest.fixture
def env_ops(monkeypatch):
    """Set environment variables, then reload mpisgd.ops; restored and reloaded afterwards."""
    yield monkeypatch
    monkeypatch.undo()
    importlib.reload(ops)


def test_env_forces_the_torch_path(env_ops):
    env_ops.setenv("MPISGD_OPS", "torch")
    importlib.reload(ops)
    assert ops.backend() == ops.backend("cuda") == "torch (MPISGD_OPS=torch)"
    assert not any(ops._kernels().values())
    env_ops.setenv("MPISGD_OPS", "fast")
    importlib.reload(ops)                    # importing never raises: the first use does
    for use in (ops.backend, lambda: ops.triad(*randn(3, 4, torch.float32, "cpu"), 1.0)):
        with pytest.raises(ValueError, match="MPISGD_OPS must be auto or torch, got 'fast'"):
            use()


# ---- validation ------------------------------------------------------------------------------

def _t(n=5, **kw):
    return torch.zeros(n, **kw)


_buf = torch.zeros(10)
INVALID = [
    ("elastic", lambda: (_t(), _t(4), _t(), ALPHA), "c and x must have the same length, got 4 and 5"),
    ("elastic", lambda: (_t(), _t(dtype=torch.float64), _t(), ALPHA),
     "c and x must have the same dtype, got torch.float64 and torch.float32"),
    ("elastic", lambda: (_t(), _t(device="meta"), _t(), ALPHA), "c and x must have the same device, got meta"),
    ("elastic", lambda: (_t(10)[::2], _t(), _t(), ALPHA), r"x must be a 1-D contiguous tensor, got shape \(5,\)"),
    ("elastic", lambda: (_t(), _t(), torch.zeros(5, 1), ALPHA), "out must be a 1-D contiguous tensor"),
    ("elastic", lambda: (_t(), _t(dtype=torch.int64), _t(), ALPHA), "c must be floating point"),
    ("elastic", lambda: ([0.0] * 5, _t(), _t(), ALPHA), "x must be a torch.Tensor, got list"),
    ("elastic", lambda: (_buf[:5], _buf[3:8], _t(), ALPHA), "x must not overlap c"),
    ("elastic", lambda: (_t(), _buf[:5], _buf[:5], ALPHA),
     r"out must not overlap c \(out may be c itself only with accumulate=True\)"),
    ("elastic", lambda: (_t(), _buf[:5], _buf[1:6], ALPHA, True), "out must not overlap c"),
    ("eamsgd_step", lambda: (_t(), _t(), _t(), LR, DELTA, _t()), "c and out must be given together"),
    ("eamsgd_step", lambda: (_buf[:5], _t(), _t(), LR, DELTA, _t(), _buf[:5], ALPHA), "y must not overlap out"),
    ("eamsgd_step", lambda: (_t(), _t(), _t(6), LR, DELTA), "g and y must have the same length"),
    ("triad", lambda: (_buf[:5], _buf[:5], _t(), 1.0), "a must not overlap b"),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name, args, message", INVALID)
def test_invalid_arguments_raise_with_the_reason(impl, name, args, message):
    fn = IMPLS[impl][("elastic", "eamsgd_step", "triad").index(name)]
    with pytest.raises(ValueError, match=message):
        fn(*args())
