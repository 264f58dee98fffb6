"""Storage faults on a real filesystem: found before training, or said in one line mid-run.

Each case mounts a tmpfs of a few hundred kB in a private mount namespace
(``unshare -m``, as root: developers and CI are) and runs a real 2-rank job
against it (storage_driver.py). Mid-run faults end the job with one line naming
the path and the cause, keep the previous checkpoint and the record's rows; the
record says why where it can.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from test_cli_errors import assert_one_error_line

HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                                reason="mounting a tmpfs needs root and unshare")


def fault(tmp_path, scenario) -> dict:
    done = subprocess.run(["unshare", "-m", sys.executable,
                           os.path.join(HERE, "storage_driver.py"), scenario, str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_a_read_only_checkpoint_dir_is_refused_before_training(tmp_path):
    got = fault(tmp_path, "ro-checkpoint-dir")
    assert got["rc"] == 2, got["output"]
    line = assert_one_error_line(type("P", (), {"stdout": got["output"], "stderr": ""}),
                                 f"--checkpoint-dir {got['ckpt']}: cannot write in ")
    assert line.endswith("(Read-only file system)")
    assert not os.path.exists(got["out"])               # nothing ran: no record


def test_a_full_disk_at_a_checkpoint_keeps_the_last_one_and_says_so(tmp_path):
    got = fault(tmp_path, "full-at-checkpoint")
    assert got["rc"] == 1, got["output"]
    last = os.path.join(got["ckpt"], f"step-{10:08d}")
    line = assert_one_error_line(
        type("P", (), {"stdout": got["output"], "stderr": ""}),
        f"cannot write the checkpoint {os.path.join(got['ckpt'], f'step-{20:08d}')}: "
        "No space left on device (rank ")
    assert line.endswith(f"the last one is kept: {last}")
    assert got["checkpoints"] == [f"step-{10:08d}"] and got["meta"] == [True]   # no half of 20
    assert got["rows"] == [10.0, 20.0]
    said = line.split("mpisgd: error: ")[1]      # the status: the first rank's note, or rank 0's
    assert re.fullmatch(r"failed: (rank \d: )?StorageError: " + re.escape(said), got["status"])


@pytest.mark.parametrize("scenario, cause", [("full-record", "No space left on device"),
                                             ("ro-record", "Read-only file system")])
def test_a_record_that_cannot_be_written_ends_the_run_in_one_line_keeping_its_rows(
        tmp_path, scenario, cause):
    got = fault(tmp_path, scenario)
    assert got["rc"] == 1, got["output"]
    assert_one_error_line(type("P", (), {"stdout": got["output"], "stderr": ""}),
                          f"cannot write the run record {got['out']}: {cause}")
    rows = got["rows"]
    assert len(rows) >= 3 and rows == [2.0 * (i + 1) for i in range(len(rows))]   # none lost
    assert got["status"] is not None                     # the last version still reads
