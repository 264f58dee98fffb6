"""Fit on the small runs, predict the large ones, side by side: docs/scaling.md's table.

    .venv/bin/mpiexec -n 16 .venv/bin/python -m mpisgd study docs/examples/scaling.yaml --out runs/scaling
    .venv/bin/mpiexec -n 4 .venv/bin/python -m mpisgd calibrate --out runs/scaling/network.json
    .venv/bin/python benchmarks/validate_scaling.py runs/scaling [--fit-ranks 2,4]

For every configuration of the study: the compute distribution (the pooled
``/steps/compute_sample``) and the overhead c0 from the records at the fit
rank counts only, the network from the calibration; then the projected seconds
per worker step at each other rank count's worker count against the measured
one (training wall time over steps), and the error. Every error is printed.
"""
import argparse
import os
import sys

from mpisgd.app import project as app, report
from mpisgd.app.record import read
from mpisgd.network import Network
from mpisgd.projection import project

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("study")
p.add_argument("--fit-ranks", default="2,4")
p.add_argument("--network", help="default: STUDY/network.json")
a = p.parse_args()
fit_ranks = {int(v) for v in a.fit_ranks.split(",")}
net = Network.parse(a.network or os.path.join(a.study, "network.json"))
records = [read(path) for path in report.records_in([os.path.join(a.study, "runs")])]
ranks = {rec["path"]: int(rec["attrs"]["world_size"]) for rec in records}   # servers included
print(f"network: {net.source}; fit on {sorted(fit_ranks)} ranks")
print(f"{'configuration':<22} {'ranks':>5} {'workers':>7} {'predicted ms':>12} {'measured ms':>11} "
      f"{'error':>7}")
worst = 0.0
for label, loads in app.families(records):
    small = [w for w in loads if ranks[w.path] in fit_ranks]
    big = [w for w in loads if w not in small and w.measured]
    if not small or not big:
        continue
    rep, c0 = app.fit(small, net)
    for w in sorted(big, key=lambda w: w.workers):
        pred = project(rep, [w.workers], net, c0)[0]["step"]
        err = (pred - w.measured) / w.measured
        worst = max(worst, abs(err))
        print(f"{label:<22} {ranks[w.path]:>5} {w.workers:>7} {pred * 1e3:>12.2f} "
              f"{w.measured * 1e3:>11.2f} {100 * err:>+6.1f}%", flush=True)
print(f"largest error: {100 * worst:.1f}%")
sys.exit(0)
