"""The cost of a log point's write to the run record, against the writers it replaced.

    python benchmarks/bench_record.py [--rows 200,2000,20000] [--trials 51]

One process, no MPI traffic. For a record already holding ROWS rows, the
median seconds to append one row with:

* **version**: :meth:`mpisgd.app.record.RunRecord.log`, which publishes a new
  version of the file (copy, append, rename: a reader can never stop it);
* **in place**: open the file, append, close (mpisgd's writer before 0.2: a
  reader holding the file made it fail);
* **swmr**: append to a file kept open in HDF5's SWMR mode and ``flush()`` (the
  mechanism docs/user-guide.md weighs: the cheapest, but a plain reader and a
  killed job's file are refused, see mpisgd/app/record.py).

"/in place" is version's time over in place's: the price of publishing whole
versions, per log point.
"""
import os
import tempfile

import h5py

from mpisgd.app.record import METRICS, RunRecord
from mpisgd.app.sidecars import unlock
from common import arguments, count, counts, interleaved, machine, parse

parser = arguments(__doc__)
parser.add_argument("--rows", type=counts, default=[200, 2000, 20000],
                    help="rows already in the record (default 200,2000,20000)")
parser.add_argument("--trials", type=count, default=51, help="appends timed per writer")
args = parse(parser)
ROW = {name: 1.0 for name in METRICS}


def append(f) -> None:
    for name in METRICS:
        ds = f["metrics"][name]
        ds.resize((ds.shape[0] + 1,))
        ds[-1] = ROW[name]


print(f"machine: {machine()}; h5py {h5py.__version__}, HDF5 {h5py.version.hdf5_version}")
print(f"{'rows':>6} {'kB':>6} {'version ms':>11} {'in place ms':>12} {'swmr ms':>8} {'/in place':>10}")
with tempfile.TemporaryDirectory() as tmp:
    for rows in args.rows:
        seeded = {name: [1.0] * rows for name in METRICS}
        versioned = RunRecord(os.path.join(tmp, f"v{rows}.h5"), {}, 1, 1, "", "", rows=seeded)
        plain = RunRecord(os.path.join(tmp, f"p{rows}.h5"), {}, 1, 1, "", "", rows=seeded)
        swmr_path = os.path.join(tmp, f"s{rows}.h5")
        with h5py.File(swmr_path, "w", libver="latest") as f:
            for name in METRICS:
                f.create_dataset(f"metrics/{name}", data=seeded[name], maxshape=(None,),
                                 chunks=(256,))
        swmr = h5py.File(swmr_path, "a", libver="latest")
        swmr.swmr_mode = True

        def in_place():
            with h5py.File(plain.path, "a") as f:
                append(f)

        def swmr_append():
            append(swmr)
            swmr.flush()

        t = interleaved({"version": lambda: versioned.log(**ROW), "in place": in_place,
                         "swmr": swmr_append}, args.trials)
        swmr.close()
        kb = os.path.getsize(versioned.path) / 1e3
        print(f"{rows:>6} {kb:>6.0f} {t['version'] * 1e3:>11.3f} {t['in place'] * 1e3:>12.3f} "
              f"{t['swmr'] * 1e3:>8.3f} {t['version'] / t['in place']:>10.2f}", flush=True)
        for rec in (versioned, plain):
            unlock(rec.path)
