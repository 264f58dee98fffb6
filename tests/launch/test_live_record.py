"""A run keeps writing its record whatever readers do (mpisgd/app/record.py).

A real second process opens the live record at 30 Hz the way a notebook does
(``h5py.File(path, "r")``, HDF5's file lock included), reads its attributes and
rows, holds it 10 ms and closes it, for the whole of four 4-rank runs of 120
rows each, one after another in one ``mpisgd study`` launch. Before records
were published as whole versions, this reader killed 2 runs of 2.
"""
import json
import subprocess
import sys

import h5py
import numpy as np

from helpers import mpiexec

RUNS, STEPS = 4, 120
GRID = (f"algo: sync\nmodel: linear\ndata: synthetic:512\nsteps: {STEPS}\nlog_every: 1\nbatch_size: 8\n"
        f"grid:\n  seed: {list(range(RUNS))}\n")

READER = r"""
import json, os, sys, time
import h5py
runs, stop = sys.argv[1], sys.argv[2]
seen, errors = {}, []
while not os.path.exists(stop):
    tick = time.monotonic()
    names = [n for n in os.listdir(runs) if n.endswith(".h5")] if os.path.isdir(runs) else []
    if names:
        name = max(names, key=lambda n: os.stat(os.path.join(runs, n)).st_mtime_ns)
        try:
            with h5py.File(os.path.join(runs, name), "r") as f:
                status = str(f.attrs["status"])
                lengths = {len(f["metrics"][k]) for k in f["metrics"]}
                steps = f["metrics/step"][()].tolist()
                time.sleep(0.010)
            if len(lengths) != 1:
                errors.append(f"{name}: metrics of lengths {sorted(lengths)}")
            seen.setdefault(name, []).append([status, steps])
        except Exception as err:
            errors.append(f"{name}: {type(err).__name__}: {err}")
    time.sleep(max(0.0, 1 / 30 - (time.monotonic() - tick)))
print(json.dumps({"seen": seen, "errors": errors}))
"""


def test_a_reader_at_30_hz_never_stops_a_run_nor_loses_a_row(tmp_path):
    (tmp_path / "grid.yaml").write_text(GRID)
    stop = tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(tmp_path / "s" / "runs"),
                               str(stop)], stdout=subprocess.PIPE, text=True)
    try:
        study = subprocess.run(mpiexec() + ["-n", "4", sys.executable, "-m", "mpisgd", "study",
                                            "grid.yaml", "--out", "s"],
                               cwd=tmp_path, capture_output=True, text=True, timeout=600)
    finally:
        stop.touch()
        out, _ = reader.communicate(timeout=60)
    assert study.returncode == 0, study.stdout + study.stderr
    report = json.loads(out)
    assert report["errors"] == []
    for seed in range(RUNS):
        name = f"seed-{seed}.h5"
        with h5py.File(tmp_path / "s" / "runs" / name, "r") as f:
            assert f.attrs["status"] == "completed"
            steps = f["metrics/step"][()].tolist()
        assert steps == list(np.arange(1, STEPS + 1, dtype=float))       # no row lost
        views = report["seen"].get(name, [])
        for status, prefix in views:                 # every version a reader saw: a prefix
            assert prefix == steps[:len(prefix)]
            assert status == "completed" or len(prefix) <= len(steps)
        live = [p for s, p in views if s != "completed"]
        assert len(live) >= 3, f"the reader saw {name} live {len(live)} times: not a live test"
