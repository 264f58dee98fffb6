"""Fused elementwise kernels of elastic averaging, and their torch reference twins.

Elastic averaging SGD (Zhang, Choromanska, LeCun, "Deep learning with
Elastic Averaging SGD", NIPS 2015) moves a worker's parameters ``x`` and
the centre ``c`` towards each other by the elastic difference::

    elastic(x, c, out, alpha, accumulate=False):
        e = alpha * (x - c);  x -= e;  out = e      (accumulate: out += e)

``out`` may be ``c`` itself with ``accumulate=True`` (then ``c += e``: a
rank that trains and holds the centre). EAMSGD's worker takes Nesterov
momentum steps; the model holds the lookahead point ``y = x + delta * v``,
where gradients are taken, and the elastic step that follows (when ``c`` is
given) is fused into the same pass::

    eamsgd_step(y, v, g, lr, delta, c=None, out=None, alpha=0.0):
        v' = delta * v - lr * g;  x = y - delta * v + v'
        [e = alpha * (x - c);  x -= e;  out = e]
        y = x + delta * v';  v = v'

``triad(a, b, c, s)`` is STREAM's ``a = b + s * c``, the memory-bandwidth
reference of ``benchmarks/bench_elastic.py``.

Each function makes one pass over memory in the compiled module
``mpisgd._ops`` (C++/OpenMP on CPU, CUDA kernels on the tensors' stream),
computing in float (double for float64) and rounding once per stored
value; ``*_reference`` is the same signature as a sequence of plain torch
ops, used where there is no compiled kernel for the device and dtype, or
everywhere with ``MPISGD_OPS=torch``. :func:`backend` says which is active.
All tensors are 1-D, contiguous, of one dtype, device and length; outputs
must not overlap the other arguments (except ``out is c`` above). The CPU
kernels run on ``torch.get_num_threads()`` threads.

Example (one worker that also holds the centre, elastic round every tau steps)::

    import torch
    from mpisgd import ops
    from mpisgd.flat import ParamBuffer

    model = torch.nn.Linear(10, 1)
    flat = ParamBuffer(model)               # parameters as views of flat.data
    centre = flat.data.clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(100):
        x, y = torch.randn(32, 10), torch.randn(32, 1)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if step % 4 == 0:                   # x -= e and centre += e, one pass
            ops.elastic(flat.data, centre, centre, alpha=0.1, accumulate=True)
"""
from __future__ import annotations

import functools
import warnings

import torch

from .mpienv import setting

try:
    from . import _ops
    _WHY = None
except ModuleNotFoundError:     # no compiler or CMake at install time (setup.py said why)
    _ops, _WHY = None, "compiled kernels not built"
except ImportError as err:      # built, but does not load here
    _ops, _WHY = None, f"compiled kernels do not load: {err}"

_CODES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16",
          torch.bfloat16: "bfloat16"}

_KERNELS = None     # device type -> dtypes with a compiled kernel; chosen on first use
_WHY_CUDA = None    # why the compiled CUDA kernels were given up at a launch


@functools.cache
def _torch_only() -> bool:
    """``MPISGD_OPS=torch``: the torch twins everywhere; read on first use (``ValueError``
    naming the variable for a bad value, then and at every later call)."""
    return setting("MPISGD_OPS") == "torch"


def _kernels() -> dict:
    """The dtypes the compiled module has kernels for, by device type (empty: the torch
    path); decided on first use, so that importing never raises on a bad ``MPISGD_OPS``."""
    global _KERNELS
    if _KERNELS is None:
        torch_only = _ops is None or _torch_only()
        names = {} if torch_only else {"cpu": _ops.CPU_DTYPES, "cuda": _ops.CUDA_DTYPES}
        _KERNELS = {kind: frozenset(d for d, name in _CODES.items() if name in names.get(kind, ()))
                    for kind in ("cpu", "cuda")}
    return _KERNELS


def backend(device="cpu") -> str:
    """Which implementation runs for tensors on ``device``, e.g. ``"cpu: C++/OpenMP (2 threads)"``.

    Half-precision dtypes the compiled module lacks (float16 on a compiler
    without ``_Float16``) take the torch path whatever this says.
    """
    kind = torch.device(device).type
    if _torch_only():
        return "torch (MPISGD_OPS=torch)"
    if _ops is None:
        return f"torch ({_WHY})"
    if kind == "cuda" and _WHY_CUDA:
        return f"torch (the compiled CUDA kernels failed: {_WHY_CUDA})"
    if not _kernels().get(kind):
        return f"torch (no compiled {kind} kernels)"
    if kind == "cuda":
        return "cuda: CUDA kernels"
    if _ops.openmp():
        n = torch.get_num_threads()
        return f"cpu: C++/OpenMP ({n} thread{'s' if n > 1 else ''})"
    return "cpu: C++ (1 thread, built without OpenMP)"


def _check(writes: dict, reads: dict, alias: tuple = (), note: str = "") -> None:
    """Raise ValueError unless the named tensors suit a kernel.

    All 1-D, contiguous, floating point, of the first one's dtype, device and
    length; the ``writes`` overlap nothing else, except that the pair of names
    ``alias`` may be one and the same tensor. ``note`` ends overlap messages.
    """
    tensors = {**writes, **reads}
    first_name, first = next(iter(tensors.items()))
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 1 or not t.is_contiguous():
            raise ValueError(f"{name} must be a 1-D contiguous tensor, got shape {tuple(t.shape)}, "
                             f"stride {t.stride()}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {t.dtype}")
        for what, a, b in (("dtype", t.dtype, first.dtype), ("device", t.device, first.device),
                           ("length", t.numel(), first.numel())):
            if a != b:
                raise ValueError(f"{name} and {first_name} must have the same {what}, got {a} and {b}")
    for w, wt in writes.items():
        for name, t in tensors.items():
            if name == w or {name, w} == set(alias) and t.data_ptr() == wt.data_ptr():
                continue
            if _overlap(wt, t):
                raise ValueError(f"{w} must not overlap {name}{note}")


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    lo, hi = a.data_ptr(), a.data_ptr() + a.numel() * a.element_size()
    return b.data_ptr() < hi and lo < b.data_ptr() + b.numel() * b.element_size()


def _run(name: str, t: torch.Tensor, *args) -> bool:
    """Run the compiled ``name`` for ``t``'s device and dtype; False when there is none."""
    if t.dtype not in _kernels().get(t.device.type, ()):
        return False
    code = _ops.DTYPES[_CODES[t.dtype]]
    if t.device.type == "cpu":
        getattr(_ops, name + "_cpu")(*args, code, torch.get_num_threads())
        return True
    try:                        # the caller's current stream on t's device: ordered, no sync
        getattr(_ops, name + "_cuda")(*args, code, t.device.index,
                                      torch.cuda.current_stream(t.device).cuda_stream)
    except RuntimeError as err:   # a launch that fails (the module's CUDA runtime newer than
        if not str(err).startswith("mpisgd._ops:"):   # the driver, no kernel image for this
            raise                 # GPU): the torch twin. Anything else is a bug: raised
        _cuda_failed(str(err))
        return False
    return True


def _cuda_failed(reason: str) -> None:
    """The compiled CUDA kernels failed at a launch: warn once, use the torch twins from now
    on (:func:`backend` says why). A launch error leaves its outputs untouched."""
    global _KERNELS, _WHY_CUDA
    _KERNELS = {**_kernels(), "cuda": frozenset()}
    _WHY_CUDA = reason.splitlines()[0] if reason else "a launch failed"
    warnings.warn(f"the compiled CUDA kernels failed ({_WHY_CUDA}); using the torch twins "
                  "(rebuild mpisgd against this machine's CUDA, or set MPISGD_OPS=torch)",
                  RuntimeWarning, stacklevel=3)


# ---- elastic --------------------------------------------------------------------------------

def elastic(x: torch.Tensor, c: torch.Tensor, out: torch.Tensor, alpha: float,
            accumulate: bool = False) -> None:
    """``e = alpha * (x - c); x -= e; out = e`` (``out += e`` with ``accumulate``), fused.

    Args:
        x: the worker's parameters, updated in place.
        c: the centre (read only, unless it is ``out``).
        out: receives the elastic difference ``e``; may be ``c`` when ``accumulate``.
        alpha: the moving rate.
        accumulate: add ``e`` to ``out`` instead of overwriting it.
    """
    _check_elastic(x, c, out, accumulate)
    if not _run("elastic", x, x.data_ptr(), c.data_ptr(), out.data_ptr(), x.numel(), float(alpha),
                bool(accumulate)):
        _elastic_torch(x, c, out, alpha, accumulate)


def elastic_reference(x: torch.Tensor, c: torch.Tensor, out: torch.Tensor, alpha: float,
                      accumulate: bool = False) -> None:
    """:func:`elastic` as plain torch ops (the unfused sequence)."""
    _check_elastic(x, c, out, accumulate)
    _elastic_torch(x, c, out, alpha, accumulate)


def _check_elastic(x, c, out, accumulate):
    if accumulate:
        _check({"x": x, "out": out}, {"c": c}, alias=("c", "out"))
    else:
        _check({"x": x, "out": out}, {"c": c}, note=" (out may be c itself only with accumulate=True)")


def _elastic_torch(x, c, out, alpha, accumulate):
    e = torch.sub(x, c, out=None if accumulate else out).mul_(alpha)
    x.sub_(e)
    if accumulate:
        out.add_(e)


# ---- eamsgd_step ----------------------------------------------------------------------------

def eamsgd_step(y: torch.Tensor, v: torch.Tensor, g: torch.Tensor, lr: float, delta: float,
                c: torch.Tensor | None = None, out: torch.Tensor | None = None,
                alpha: float = 0.0) -> None:
    """One EAMSGD iteration (Algorithm 2) in lookahead storage, fused into one pass.

    The model holds ``y = x + delta v`` (where ``g`` was taken). From the
    iteration's copy ``x = y - delta v``, the elastic step (when ``c`` is
    given) and the momentum step are both taken, as the paper writes them:
    ``[e = alpha (x - c); out = e];  v' = delta v - lr g;
    y = x - e + v' + delta v';  v = v'``.

    Args:
        y: the model's parameters, ``x + delta * v``, where ``g`` was taken; updated in place.
        v: the momentum, updated in place.
        g: the gradient at ``y``.
        lr: the learning rate (eta).
        delta: the momentum coefficient.
        c: the centre, or ``None`` for a step without the elastic part.
        out: receives ``e``; given exactly when ``c`` is.
        alpha: the moving rate.
    """
    _check_eamsgd(y, v, g, c, out)
    ptrs = [t.data_ptr() if t is not None else 0 for t in (y, v, g, c, out)]
    if not _run("eamsgd_step", y, *ptrs, y.numel(), float(lr), float(delta), float(alpha)):
        _eamsgd_torch(y, v, g, lr, delta, c, out, alpha)


def eamsgd_step_reference(y: torch.Tensor, v: torch.Tensor, g: torch.Tensor, lr: float, delta: float,
                          c: torch.Tensor | None = None, out: torch.Tensor | None = None,
                          alpha: float = 0.0) -> None:
    """:func:`eamsgd_step` as plain torch ops (the unfused sequence)."""
    _check_eamsgd(y, v, g, c, out)
    _eamsgd_torch(y, v, g, lr, delta, c, out, alpha)


def _check_eamsgd(y, v, g, c, out):
    if (c is None) != (out is None):
        raise ValueError("c and out must be given together (the elastic step needs both)")
    writes, reads = {"y": y, "v": v}, {"g": g}
    if c is not None:
        writes["out"], reads["c"] = out, c
    _check(writes, reads)


def _eamsgd_torch(y, v, g, lr, delta, c, out, alpha):
    x = torch.add(y, v, alpha=-delta)                   # x = y - delta v
    if c is not None:
        x.sub_(torch.sub(x, c, out=out).mul_(alpha))    # out = e = alpha (x - c); x -= e
    v.mul_(delta).add_(g, alpha=-lr)                    # v' = delta v - lr g
    x.add_(v)                                           # x += v'
    torch.add(x, v, alpha=delta, out=y)                 # y = x + delta v'


# ---- triad ----------------------------------------------------------------------------------

def triad(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, s: float) -> None:
    """STREAM triad ``a = b + s * c``, compiled like the kernels above (bandwidth reference)."""
    _check({"a": a}, {"b": b, "c": c})
    if not _run("triad", a, a.data_ptr(), b.data_ptr(), c.data_ptr(), a.numel(), float(s)):
        _triad_torch(a, b, c, s)


def triad_reference(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, s: float) -> None:
    """:func:`triad` as one torch op."""
    _check({"a": a}, {"b": b, "c": c})
    _triad_torch(a, b, c, s)


def _triad_torch(a, b, c, s):
    torch.add(b, c, alpha=s, out=a)
