"""``mpisgd report``: curves and a comparison table from run records.

Draws train loss and test error against wall-clock time, steps and bytes
sent (a 2 x 3 figure, one line per run) and prints, per run: time and step at
which the test error first reached ``--target``, final test error and loss,
rounds and bytes sent.
"""
from __future__ import annotations

import os

import numpy as np

from .record import read


def label(rec: dict) -> str:
    cfg = rec["config"]
    opts = cfg.get("options", {})
    extra = f" tau={opts['tau']}" if "tau" in opts and cfg.get("algo") != "sync" else ""
    return f"{cfg.get('algo', '?')}{extra} ({os.path.basename(rec['path'])})"


def first_reach(rec: dict, target: float):
    """(wall_time, step) of the first log point with test error <= target, or None."""
    m = rec["metrics"]
    hit = np.flatnonzero(m["test_error"] <= target)
    return (m["wall_time"][hit[0]], m["step"][hit[0]]) if len(hit) else None


def table(records: list[dict], target: float) -> str:
    head = f"{'run':<44} {'status':<10} {'t@target':>9} {'step@tgt':>8} " \
           f"{'final err':>9} {'final loss':>10} {'rounds':>7} {'bytes':>10}"
    lines = [f"target test error: {target}", head, "-" * len(head)]
    for rec in records:
        m = rec["metrics"]
        reach = first_reach(rec, target)
        status = str(rec["attrs"].get("status", "?"))
        if not len(m.get("step", [])):
            lines.append(f"{label(rec)[:44]:<44} {status[:10]:<10} (no log points)")
            continue
        lines.append(
            f"{label(rec)[:44]:<44} {status[:10]:<10} "
            f"{(f'{reach[0]:.2f}s' if reach else '-'):>9} {(str(int(reach[1])) if reach else '-'):>8} "
            f"{m['test_error'][-1]:>9.4f} {m['test_loss'][-1]:>10.4f} {int(m['rounds'][-1]):>7} "
            f"{m['bytes_sent'][-1]:>10.3g}")
    return "\n".join(lines)


def plot(records: list[dict], out: str) -> None:
    try:
        import matplotlib
    except ImportError:
        raise ImportError("report --out needs matplotlib: pip install 'mpisgd[report]' "
                          "(without --out, report prints the table only)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    xs = (("wall_time", "wall-clock time (s)"), ("step", "steps"), ("bytes_sent", "bytes sent (all ranks)"))
    ys = (("train_loss", "train loss"), ("test_error", "test error"))
    fig, axes = plt.subplots(len(ys), len(xs), figsize=(15, 8))
    for rec in records:
        m = rec["metrics"]
        if not len(m.get("step", [])):
            continue
        for row, (metric, _) in enumerate(ys):
            for col, (x, _) in enumerate(xs):
                axes[row][col].plot(m[x], m[metric], marker=".", label=label(rec))
    for row, (_, ylabel) in enumerate(ys):
        for col, (_, xlabel) in enumerate(xs):
            ax = axes[row][col]
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_yscale("log")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(paths: list[str], out: str | None, target: float) -> int:
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(f"no such run record: {missing[0]}")
    records = [read(p) for p in paths]
    print(table(records, target))
    if out:
        plot(records, out)
        print(f"figure: {out}")
    return 0
