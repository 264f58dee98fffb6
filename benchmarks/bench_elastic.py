"""The fused elastic kernels against the unfused torch sequence and the memory bandwidth.

    .venv/bin/python benchmarks/bench_elastic.py                    # CPU, one thread per core, n = 1M, 10M, 100M
    .venv/bin/python benchmarks/bench_elastic.py --sizes 1e6,1e7 --threads 1 --trials 15
    python benchmarks/bench_elastic.py --device cuda

One process, no MPI. On float32 arrays of n elements it times
:func:`mpisgd.ops.elastic` (reads x, c; writes x, out: 4 arrays moved) and
:func:`mpisgd.ops.eamsgd_step` with a centre (reads y, v, g, c; writes y, v,
out: 7 arrays), each fused and as its torch reference twin (the unfused
sequence), and reports GB/s over the arrays moved, the fraction of the
reference bandwidth, and the fused/unfused speed-up. The reference
bandwidth is the compiled STREAM triad ``a = b + s c`` (3 arrays, same
flags and threads) on CPU, and ``dst.copy_(src)`` (2 arrays) on CUDA.
Goals: fused >= 0.8 of triad on CPU, >= 0.85 of copy on CUDA.

The contenders alternate trial by trial, the order reversed every other
trial; each figure is the median over trials of the time per call.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from mpisgd import ops

ALPHA, LR, DELTA = 0.01, 1e-3, 0.9     # small: the values stay normal over hundreds of calls


def interleaved(contenders: dict, trials: int, reps: int, sync, warmup: int = 2) -> dict:
    """Median seconds per call of each ``fn`` over ``trials`` trials of ``reps`` calls, alternating them."""
    times = {name: [] for name in contenders}
    order = list(contenders.items())
    for t in range(warmup + trials):
        for name, fn in (order if t % 2 == 0 else order[::-1]):      # no contender always first
            sync()
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            sync()
            if t >= warmup:
                times[name].append((time.perf_counter() - t0) / reps)
    return {name: statistics.median(v) for name, v in times.items()}


def machine(device: torch.device) -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return (f"{model}, {len(os.sched_getaffinity(0))} cores{gpu}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch threads; kernels: {ops.backend(device)}")


def bench(n: int, device: torch.device, trials: int) -> list[tuple]:
    """(name, arrays moved, seconds per call) of every contender at length n."""
    y, v, g, x, c, out = torch.randn(6, n, device=device).unbind()
    contenders = {
        "elastic fused": (4, lambda: ops.elastic(x, c, out, ALPHA)),
        "elastic unfused": (4, lambda: ops.elastic_reference(x, c, out, ALPHA)),
        "eamsgd_step fused": (7, lambda: ops.eamsgd_step(y, v, g, LR, DELTA, c, out, ALPHA)),
        "eamsgd_step unfused": (7, lambda: ops.eamsgd_step_reference(y, v, g, LR, DELTA, c, out, ALPHA)),
        "triad (compiled)": (3, lambda: ops.triad(out, x, c, 0.5)),
    }
    if device.type == "cuda":
        contenders["copy"] = (2, lambda: out.copy_(x))
        sync = torch.cuda.synchronize
    else:
        sync = lambda: None      # noqa: E731
    reps = max(1, 20_000_000 // n)             # a trial lasts well over a timer tick
    medians = interleaved({k: fn for k, (_, fn) in contenders.items()}, trials, reps, sync)
    return [(name, arrays, medians[name]) for name, (arrays, _) in contenders.items()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    p.add_argument("--sizes", default="1e6,1e7,1e8", help="comma-separated lengths (default 1e6,1e7,1e8)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="torch (and kernel) threads on CPU (default: one per core)")
    p.add_argument("--trials", type=int, default=9, help="timed trials per contender (default 9)")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    reference = "copy" if device.type == "cuda" else "triad (compiled)"
    print(f"machine: {machine(device)}")
    print(f"float32, median of {args.trials} interleaved trials; 'of {reference}': fraction of its GB/s")
    print(f"{'n':>6}  {'contender':<20} {'ms':>9} {'GB/s':>7} {'of ' + reference:>19}")
    for n in (int(float(s)) for s in args.sizes.split(",")):
        rows = bench(n, device, args.trials)
        gbs = {name: arrays * n * 4 / t / 1e9 for name, arrays, t in rows}
        for name, _, t in rows:
            print(f"{n / 1e6:>5g}M  {name:<20} {t * 1e3:9.3f} {gbs[name]:7.1f} {gbs[name] / gbs[reference]:19.2f}")
        secs = {name: t for name, _, t in rows}
        print(f"{n / 1e6:>5g}M  speed-up fused/unfused: elastic "
              f"{secs['elastic unfused'] / secs['elastic fused']:.2f}x, eamsgd_step "
              f"{secs['eamsgd_step unfused'] / secs['eamsgd_step fused']:.2f}x")


if __name__ == "__main__":
    main()
