"""A run meeting a real filesystem fault, driven from inside a private mount namespace.

    unshare -m python storage_driver.py SCENARIO DIR

(test_storage.py runs it, as root.) A tmpfs of a few hundred kB is mounted at
DIR/fs, visible to this process and its children only, and gone with them.
Scenarios:

* ``ro-checkpoint-dir``: the tmpfs is read-only and is ``--checkpoint-dir``;
* ``full-at-checkpoint``: checkpoints go to the tmpfs, which holds one of them
  but not two;
* ``full-record``: the record is on the tmpfs, which a filler fills once the run
  has logged 3 rows;
* ``ro-record``: the same, but the tmpfs is remounted read-only instead.

Prints, as JSON: the job's exit status and output, the record's rows and
status (read after the fault, once the filesystem is writable again), the
failure note and the checkpoints left.
"""
import json
import os
import subprocess
import sys
import time

import h5py

scenario, base = sys.argv[1], sys.argv[2]
fs = os.path.join(base, "fs")
os.makedirs(fs, exist_ok=True)
subprocess.run(["mount", "--make-rprivate", "/"], check=True)
size = {"full-at-checkpoint": "600k"}.get(scenario, "1m")
subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", fs], check=True)
launcher = os.path.join(os.path.dirname(sys.executable), "mpiexec")
out = os.path.join(fs if scenario in ("full-record", "ro-record") else base, "run.h5")
ckpt = os.path.join(fs if scenario in ("ro-checkpoint-dir", "full-at-checkpoint") else base,
                    "ck")
args = ["--out", out, "--checkpoint-dir", ckpt, "--threads", "1"]
if scenario == "ro-checkpoint-dir":
    subprocess.run(["mount", "-o", "remount,ro", fs], check=True)
    args += ["--steps", "4"]
elif scenario == "full-at-checkpoint":
    args += ["--steps", "40", "--checkpoint-every", "10", "--log-every", "10"]
else:
    args += ["--steps", "1000000", "--log-every", "2"]
job = subprocess.Popen([launcher, "-n", "2", sys.executable, "-m", "mpisgd", "train", "--quiet",
                        *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def rows() -> list:
    try:
        with h5py.File(out, "r") as f:
            return f["metrics/step"][()].tolist()
    except (OSError, KeyError):
        return []


if scenario in ("full-record", "ro-record"):
    deadline = time.monotonic() + 120
    while len(rows()) < 3 and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if scenario == "ro-record":       # busy while a log point's new version is open: retry
        while subprocess.run(["mount", "-o", "remount,ro", fs]).returncode:
            time.sleep(0.01)
    else:
        with open(os.path.join(fs, "filler"), "wb", buffering=0) as filler:
            try:
                while True:
                    filler.write(b"\0" * 4096)
            except OSError:
                pass
try:
    stdout, stderr = job.communicate(timeout=180)
except subprocess.TimeoutExpired:
    job.kill()
    stdout, stderr = job.communicate()
subprocess.run(["mount", "-o", "remount,rw", fs], check=True)
status = None
if os.path.exists(out):
    with h5py.File(out, "r") as f:
        status = str(f.attrs["status"])
note = open(out + ".failed").read() if os.path.exists(out + ".failed") else None
print(json.dumps({"rc": job.returncode, "output": stdout + stderr, "rows": rows(),
                  "status": status, "note": note,
                  "checkpoints": sorted(os.listdir(ckpt)) if os.path.isdir(ckpt) else [],
                  "meta": [os.path.exists(os.path.join(ckpt, d, "meta.json"))
                           for d in sorted(os.listdir(ckpt))] if os.path.isdir(ckpt) else [],
                  "ckpt": ckpt, "out": out}))
