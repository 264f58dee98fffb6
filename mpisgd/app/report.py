"""``mpisgd report``: curves and a comparison table from run records, grouped over seeds.

``mpisgd report PATH... [--out FIG] [--target T] [--panels ...] [--x ...]``:
each PATH is a record or a folder (a study's ``DIR``: every ``*.h5`` under
it). Records whose configurations differ only in the seed (and what follows
it: the data order, delays, random graphs; their paths) form one group,
drawn as the mean over its runs with a band from the lowest to the highest
run (``--band std``: mean +- one standard deviation; ``none``). Curves of a
group are put on common abscissae first: the steps where every run logged,
or for time and bytes a grid up to the shortest run's end, each run linearly
interpolated (``numpy.interp``).

A language model's record (``--data text``) adds ``perplexity``, exp(test
loss), as a panel and a table column.

Labels carry what tells groups apart: the algorithm, its period or K (``tau``,
``k``), the options whose values differ between the groups shown where they apply, an
option that applies to some groups only where it is not at its default (``outer=nesterov``
beside sync), and always the worker count
(``async-easgd, 3 workers``) and the number of runs. Axes: losses and the
test error on log scales (the error in percent, so 2-10% is not squashed
against 70%), bytes in MB or GB, ``--target`` as a dashed line on error
panels.

The table, one row per group: runs (completed of all), time and step at
which the test error first reached the target (mean +- sd over the runs that
reached it, and how many did), final error and loss (mean +- sd), rounds,
bytes, and the step time's 50th, 90th and 99th percentiles pooled over the
runs' workers (``/steps/step_sample``, :mod:`mpisgd.steptimes`).
"""
from __future__ import annotations

import glob
import json
import os

import numpy as np

from .. import algorithms
from ..text import perplexity
from .record import read

#: Configuration keys that do not make a different experiment (the seed's followers, paths).
NOT_A_CONFIGURATION = {"seed", "out", "checkpoint_dir", "checkpoint_every", "resume", "overwrite",
                       "threads", "log_every", "eval_samples", "deterministic", "quiet"}
SEEDED_OPTIONS = {"straggler_seed", "topology_seed"}
HEADLINE = ("tau", "k")          #: options always in a label where they apply
PANELS = {"train_loss": "train loss", "test_loss": "test loss", "test_error": "test error",
          "consensus_distance": "consensus distance", "perplexity": "test perplexity"}
XS = {"time": ("wall_time", "wall-clock time (s)"), "steps": ("step", "steps"),
      "bytes": ("bytes_sent", "bytes sent")}


def records_in(paths: list[str]) -> list[str]:
    """The record files ``paths`` name: files as given, folders searched for ``*.h5``."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(glob.glob(os.path.join(p, "**", "*.h5"), recursive=True))
            if not found:
                raise FileNotFoundError(f"no run records (*.h5) under {p}")
            out += found
        elif os.path.exists(p):
            out.append(p)
        else:
            raise FileNotFoundError(f"no such run record: {p}")
    return out


def experiment(rec: dict) -> dict:
    """The configuration that makes the experiment: without the seed and the paths."""
    cfg = {k: v for k, v in rec["config"].items() if k not in NOT_A_CONFIGURATION}
    cfg["options"] = {k: v for k, v in cfg.get("options", {}).items() if k not in SEEDED_OPTIONS}
    cfg["workers"] = int(rec["attrs"].get("workers", 0))
    return cfg


def group(records: list[dict]) -> list[list[dict]]:
    """Records by :func:`experiment`, in the order their first record came."""
    groups: dict[str, list[dict]] = {}
    for rec in records:
        groups.setdefault(json.dumps(experiment(rec), sort_keys=True, default=str), []).append(rec)
    return list(groups.values())


def _flat(cfg: dict) -> dict:
    return {**{k: v for k, v in cfg.items() if k != "options"}, **cfg.get("options", {})}


def labels(groups: list[list[dict]]) -> list[str]:
    """``local tau=8, 4 workers (3 seeds)``: the algorithm, what differs, the workers."""
    flats = [_flat(experiment(g[0])) for g in groups]
    keys = sorted({k for f in flats for k in f})
    varying = [k for k in keys if k not in ("algo", "workers")       # differs where it applies
               and (k in HEADLINE or len({json.dumps(f[k], default=str) for f in flats if k in f}) > 1)]
    defaults = {k: o.default for k, o in algorithms.all_options().items()}
    some = [k for k in keys if k in defaults and k not in varying     # applies to some groups
            and any(k not in f for f in flats)]
    out = []
    for f, runs in zip(flats, groups):
        text = f.get("algo", "?")
        shown = [k for k in varying if f.get(k) is not None] + \
            [k for k in some if k in f and f[k] is not None and f[k] != defaults[k]]
        text += "".join(f" {k}={f[k]}" for k in sorted(shown))
        text += f", {f['workers']} workers"
        if len(runs) > 1:
            seeds = len({r["config"].get("seed") for r in runs})
            text += f" ({len(runs)} runs" + (f", {seeds} seeds)" if seeds != len(runs) else ")")
        out.append(text)
    return out


def with_perplexity(rec: dict) -> dict:
    """``rec`` with ``perplexity`` = exp(test_loss) among its metrics where it is a language
    model's (``task`` attribute: losses in nats per byte), ``None`` elsewhere."""
    m, data = rec["metrics"], str(rec["config"].get("data", ""))
    if (str(rec["attrs"].get("task", "")) == "language model" or data.startswith("text:")) \
            and "test_loss" in m:
        m["perplexity"] = perplexity(m["test_loss"])
    return rec


def first_reach(rec: dict, target: float):
    """(wall_time, step) of the first log point with test error <= target, or None."""
    m = rec["metrics"]
    hit = np.flatnonzero(m["test_error"] <= target)
    return (m["wall_time"][hit[0]], m["step"][hit[0]]) if len(hit) else None


def curve(runs: list[dict], x: str, y: str, band: str = "minmax"):
    """``(xs, mean, low, high)`` of ``y`` against ``x`` over ``runs`` on common abscissae."""
    logged = [r["metrics"] for r in runs if len(r["metrics"].get("step", [])) and y in r["metrics"]]
    if not logged:           # no log point, or a metric it lacks (a classifier's perplexity)
        return None
    if x == "step":
        xs = np.array(sorted(set.intersection(*(set(m["step"].tolist()) for m in logged))))
    else:
        end = min(m[x][-1] for m in logged)
        xs = np.unique(np.concatenate([m[x][m[x] <= end] for m in logged]))
    ys = np.stack([np.interp(xs, m[x], m[y]) for m in logged])
    mean = ys.mean(0)
    if band == "std":
        sd = ys.std(0, ddof=1) if len(ys) > 1 else np.zeros_like(mean)
        return xs, mean, mean - sd, mean + sd
    return xs, mean, ys.min(0), ys.max(0)


def _mean_sd(values, fmt: str) -> str:
    if not values:
        return "-"
    v = np.asarray(values, dtype=float)
    return format(v.mean(), fmt) + (f"+-{format(v.std(ddof=1), fmt)}" if len(v) > 1 else "")


def step_percentiles(runs: list[dict]) -> list[float] | None:
    """Step time's 50th, 90th, 99th percentiles (seconds), pooled over the runs' workers."""
    samples = [r.get("steps", {}).get("step_sample") for r in runs]
    pooled = np.concatenate([np.ravel(s) for s in samples if s is not None] or [np.array([])])
    pooled = pooled[np.isfinite(pooled)]
    return list(np.percentile(pooled, [50, 90, 99])) if len(pooled) else None


def table(records: list[dict], target: float) -> str:
    groups = group(records)
    names = labels(groups)
    width = max([28] + [len(n) for n in names])
    head = (f"{'configuration':<{width}} {'runs':>5} {'t@target s':>12} {'step@tgt':>9} "
            f"{'final err':>13} {'final loss':>13} {'rounds':>7} {'MB sent':>9} "
            f"{'step ms p50/p90/p99':>20}")
    models = any("perplexity" in r["metrics"] for r in records)     # language models
    if models:
        head += f" {'final ppl':>13}"
    lines = [f"target test error: {target}", head, "-" * len(head)]
    for name, runs in zip(names, groups):
        done = sum(str(r["attrs"].get("status")) == "completed" for r in runs)
        logged = [r for r in runs if len(r["metrics"].get("step", []))]
        if not logged:
            status = str(runs[0]["attrs"].get("status", "?"))
            lines.append(f"{name:<{width}} {f'{done}/{len(runs)}':>5} (no log points: {status[:60]})")
            continue
        reach = [first_reach(r, target) for r in logged]
        hit = [x for x in reach if x is not None]
        t = _mean_sd([x[0] for x in hit], ".2f") + (f" ({len(hit)}/{len(logged)})"
                                                     if len(hit) < len(logged) else "")
        steps = _mean_sd([x[1] for x in hit], ".0f")
        err = _mean_sd([r["metrics"]["test_error"][-1] for r in logged], ".4f")
        loss = _mean_sd([r["metrics"]["test_loss"][-1] for r in logged], ".4f")
        rounds = np.mean([r["metrics"]["rounds"][-1] for r in logged])
        mb = np.mean([r["metrics"]["bytes_sent"][-1] for r in logged]) / 1e6
        pct = step_percentiles(logged)
        pct = "/".join(f"{1e3 * p:.2f}" for p in pct) if pct else "-"
        ppl = _mean_sd([r["metrics"]["perplexity"][-1] for r in logged
                        if "perplexity" in r["metrics"]], ".3f")
        lines.append(f"{name:<{width}} {f'{done}/{len(runs)}':>5} {t:>12} {steps:>9} {err:>13} "
                     f"{loss:>13} {rounds:>7.0f} {mb:>9.3g} {pct:>20}"
                     + (f" {ppl:>13}" if models else ""))
    return "\n".join(lines)


def plot(records: list[dict], out: str, target: float | None = None,
         panels: tuple[str, ...] = ("train_loss", "test_error"),
         xs: tuple[str, ...] = ("time", "steps", "bytes"), band: str = "minmax"):
    """Write the figure to ``out``; returns it (the caller closes it: ``plt.close(fig)``)."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("report --out needs matplotlib: pip install 'mpisgd[report]' "
                          "(without --out, report prints the table only)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, PercentFormatter
    groups = group(records)
    names = labels(groups)
    most = max((r["metrics"]["bytes_sent"][-1] for g in groups for r in g
                if len(r["metrics"].get("step", []))), default=0)
    unit, scale = ("GB", 1e9) if most >= 1e9 else ("MB", 1e6)
    fig, axes = plt.subplots(len(panels), len(xs), figsize=(5 * len(xs), 3.6 * len(panels)),
                             squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, runs) in enumerate(zip(names, groups)):
        color = colors[i % len(colors)]
        for row, y in enumerate(panels):
            for col, x in enumerate(xs):
                got = curve(runs, XS[x][0], y, band)
                if got is None:
                    continue
                cx, mean, low, high = got
                if x == "bytes":
                    cx = cx / scale
                ax = axes[row][col]
                ax.plot(cx, mean, color=color, label=name, lw=1.5)
                if len(runs) > 1 and band != "none":
                    ax.fill_between(cx, low, high, color=color, alpha=0.2, lw=0)
    for row, y in enumerate(panels):
        for col, x in enumerate(xs):
            ax = axes[row][col]
            ax.set_xlabel(XS[x][1] + (f" ({unit}, all ranks)" if x == "bytes" else ""))
            ax.set_ylabel(PANELS[y])
            ax.grid(alpha=0.3, which="both")
            ax.set_yscale("log")
            if x == "bytes":
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            if y == "test_error":
                ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
                ax.yaxis.set_minor_formatter(FuncFormatter(_minor_percent))
                if target is not None:
                    ax.axhline(target, color="k", ls="--", lw=0.8, label=f"target {target:.1%}")
    axes[-1][0].legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=150)
    return fig


def _minor_percent(value: float, _) -> str:
    """2% and 5% (20%, 50%) between the decades; the other minor ticks unlabelled."""
    if value <= 0:
        return ""
    mantissa = round(value / 10 ** np.floor(np.log10(value)))
    return f"{100 * value:g}%" if mantissa in (2, 5) else ""


def _choices(text: str, known, what: str) -> tuple[str, ...]:
    items = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in items if s not in known]
    if bad or not items:
        raise KeyError(f"--{what} takes a comma-separated list of {', '.join(known)}, got {text!r}")
    return items


def main(paths: list[str], out: str | None, target: float, panels: str = "train_loss,test_error",
         xs: str = "time,steps,bytes", band: str = "minmax") -> int:
    chosen_panels, chosen_xs = _choices(panels, PANELS, "panels"), _choices(xs, XS, "x")
    records = [with_perplexity(read(p)) for p in records_in(paths)]
    print(table(records, target))
    if out:
        import matplotlib.pyplot as plt
        plt.close(plot(records, out, target, chosen_panels, chosen_xs, band))
        print(f"figure: {out}")
    return 0


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
