"""``mpisgd project RECORDS... --workers 64,256,1024 --network FILE|ALPHA,BETA``.

Groups the records by configuration (:func:`mpisgd.app.report.experiment`,
the worker count aside: the same algorithm at several P is one fit set),
pools their per-worker compute samples into one distribution, fits the
overhead (c0 per step, or the server's cost per message o:
:func:`mpisgd.projection.fit_overhead`), and prints,
per configuration and requested worker count, the projected step time, its
limit (E[C], the step time if communication and waiting were free), the
modelled communication (network and injected link delay) and the waiting
(for stragglers, the server's queue: the rest but the overhead c0), the
compute utilisation (E[C] / step), bytes sent per worker step and time per
epoch. Where the records span
two or more worker counts it also fits on all but the largest and predicts
that one: the projection's own error, printed beside. ``--out FIG`` plots
step time, utilisation, bytes and epoch time against workers (log axes),
the measured steps as points and the limit as a dashed line.
"""
from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np

from ..errors import ConfigError
from ..network import Network
from ..projection import Empirical, fit_overhead, project, workload
from . import report
from .record import read


def families(records: list[dict]) -> list[tuple[str, list]]:
    """(label, workloads) per configuration, the worker count aside."""
    out: dict[str, list] = {}
    for rec in records:
        key = {k: v for k, v in report.experiment(rec).items() if k != "workers"}
        out.setdefault(json.dumps(key, sort_keys=True, default=str), []).append(workload(rec))
    result = []
    for loads in out.values():
        loads.sort(key=lambda w: w.workers)
        result.append((_label(loads[0]), loads))
    return result


def _label(w) -> str:
    extra = "".join(f" {k}={w.options[k]}" for k in ("tau", "k", "servers", "topology")
                    if w.options.get(k) not in (None, 1) or (k == "k" and w.options.get(k)))
    return w.algo + extra


def fit(loads, net: Network):
    """``(workload, overhead)`` fitted on ``loads``: the first one's workload with their
    pooled compute samples as its distribution, and :func:`fit_overhead` over them all."""
    pooled = Empirical(np.concatenate([w.compute.x for w in loads]))
    return replace(loads[0], compute=pooled), fit_overhead(loads, net)


def validate(loads, net: Network) -> tuple[int, float, float] | None:
    """(P, predicted, measured) for the largest P fitted on the smaller ones, or None."""
    counts = sorted({w.workers for w in loads})
    if len(counts) < 2:
        return None
    small = [w for w in loads if w.workers < counts[-1]]
    big = [w for w in loads if w.workers == counts[-1] and w.measured]
    if not big:
        return None
    rep, c0 = fit(small, net)
    predicted = project(rep, [counts[-1]], net, c0)[0]["step"]
    return counts[-1], predicted, float(np.mean([w.measured for w in big]))


def main(paths: list[str], workers: list[int], network: str, out: str | None,
         group: int | None = None, ranks_per_node: int | None = None) -> int:
    """``group``, ``ranks_per_node``: the projected layout (workers of ``group`` ranks,
    ``ranks_per_node`` sharing a link; default the records')."""
    try:
        net = Network.parse(network)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    records = [read(p) for p in report.records_in(paths)]
    try:
        fams = families(records)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    print(f"network: {net.source or network} (alpha {net.alpha * 1e6:.2f} us, "
          f"beta {net.beta * 1e9:.4f} ns/B)")
    plotted = []
    for label, loads in fams:
        rep, c0 = fit(loads, net)
        rep = replace(rep, group=group or rep.group, ranks_per_node=ranks_per_node or
                      (group if group and group > rep.ranks_per_node else rep.ranks_per_node))
        try:
            rows = project(rep, workers, net, c0)
        except ValueError as err:
            raise ConfigError(f"{label}: {err}") from None
        measured = sorted({(w.workers, w.measured) for w in loads if w.measured})
        fitted = (f"server cost per message o {c0.message * 1e3:.3f} ms" if c0.message
                  else f"overhead c0 {c0.step * 1e3:.2f} ms/step")
        layout = f" in groups of {rep.group}, {rep.ranks_per_node} ranks a node" \
            if rep.group > 1 else ""
        print(f"\n{label}{layout}: fitted on {', '.join(f'{p}' for p in sorted({w.workers for w in loads}))} "
              f"workers ({len(loads)} records); E[C] {rep.compute.mean * 1e3:.2f} ms, {fitted}, "
              f"{rep.nbytes / 1e6:.3g} MB per model")
        check = validate(loads, net)
        if check:
            p, pred, meas = check
            print(f"  fit on fewer workers, predict {p}: {pred * 1e3:.2f} ms vs measured "
                  f"{meas * 1e3:.2f} ms ({100 * (pred - meas) / meas:+.1f}%)")
        print(f"  {'workers':>8} {'step ms':>9} {'limit ms':>9} {'comm ms':>9} {'wait ms':>9} "
              f"{'util':>6} {'MB/step':>9} {'epoch s':>9}")
        for r in rows:
            epoch = f"{r['epoch']:.3g}" if r["epoch"] is not None else "-"
            wait = max(0.0, r["step"] - r["limit"] - r["comm"] - c0.step)
            print(f"  {r['workers']:>8} {r['step'] * 1e3:>9.3f} {r['limit'] * 1e3:>9.3f} "
                  f"{r['comm'] * 1e3:>9.3f} {wait * 1e3:>9.3f} {100 * r['utilisation']:>5.0f}% "
                  f"{r['bytes'] / 1e6:>9.3g} {epoch:>9}")
        plotted.append((label, rows, measured))
    if out:
        _plot(plotted, out)
        print(f"\nfigure: {out}")
    return 0


def _plot(plotted, out: str) -> None:
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("project --out needs matplotlib: pip install 'mpisgd[report]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = (("step", "step time (s)"), ("utilisation", "compute utilisation"),
              ("bytes", "MB sent per worker step"), ("epoch", "time per epoch (s)"))
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, rows, measured) in enumerate(plotted):
        c = colors[i % len(colors)]
        ps = [r["workers"] for r in rows]
        for ax, (key, _) in zip(axes, panels):
            ys = [r[key] for r in rows]
            if key == "bytes":
                ys = [y / 1e6 for y in ys]
            if any(y is None for y in ys):
                continue
            ax.plot(ps, ys, marker="o", color=c, label=label)
        axes[0].plot(ps, [r["limit"] for r in rows], ls="--", color=c, lw=0.8,
                     label=f"{label}: limit (compute only)")
        if measured:
            axes[0].plot([p for p, _ in measured], [m for _, m in measured], "x", color=c,
                         ms=8, label=f"{label}: measured")
    for ax, (key, ylabel) in zip(axes, panels):
        ax.set_xscale("log", base=2)
        if key != "utilisation":
            ax.set_yscale("log")
        ax.set_xlabel("workers")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)
