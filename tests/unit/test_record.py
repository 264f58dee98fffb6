"""The run record's files: refusing an existing one, the lock, a continuation's rows,
and the failure a rank notes beside it (what ``read`` and ``fail`` make of it)."""
import os
import subprocess
import sys

import numpy as np
import pytest
from mpi4py import MPI

from mpisgd.app import prepare, record, sidecars, train
from mpisgd.app.config import from_sources
from mpisgd.errors import ConfigError

ROW = {name: 1.0 for name in record.METRICS}


def new(path, **kw):
    return record.RunRecord(str(path), {"algo": "sync"}, 4, 4, "MPICH", "0", **kw)


def test_existing_record_is_refused_unless_overwrite_or_resume(tmp_path):
    path = str(tmp_path / "run.h5")
    new(path).log(**ROW)
    with pytest.raises(ConfigError, match=rf"^--out {path} exists; give --overwrite to replace "
                                          r"it, --resume CHECKPOINT to continue its run"):
        sidecars.claim(path)
    sidecars.claim(path, resume=True)                   # a continuation expects it
    assert os.path.exists(path)
    open(path + sidecars.FAILED, "w").write("rank 1: OSError: old")
    sidecars.claim(path, overwrite=True)                # the old run's rows and failure go
    assert not os.path.exists(path) and not os.path.exists(path + sidecars.FAILED)


def test_prepare_refuses_an_existing_out_before_training(tmp_path):
    out = tmp_path / "run.h5"
    out.write_bytes(b"an earlier run")
    cfg = from_sources(None, dict(steps=5, threads=1, out=str(out)))
    with pytest.raises(ConfigError, match="exists; give --overwrite"):
        train.prepare(cfg, MPI.COMM_SELF)
    cfg = from_sources(None, dict(steps=5, threads=1, out=str(out), overwrite=True))
    train.prepare(cfg, MPI.COMM_SELF)
    assert not out.exists()


def hold(path, then="time.sleep(60)"):
    """Another process holding the record's lock: it prints 'held' once it has it."""
    code = (f"import time; from mpisgd.app import sidecars; sidecars.lock({str(path)!r}); "
            f"print('held', flush=True); {then}")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_record_another_job_writes_is_refused_naming_it(tmp_path):
    path = str(tmp_path / "run.h5")
    other = hold(path)
    try:
        with pytest.raises(ConfigError, match=rf"^--out {path} is being written by another job "
                                              rf"\(pid {other.pid} on .*\); wait for it"):
            sidecars.claim(path, overwrite=True)
        with pytest.raises(ConfigError, match="being written by another job"):
            new(path)
    finally:
        other.kill()
        other.wait()
    new(path)                     # the kernel dropped the killed job's lock: no stale lock
    assert record.read(path)["attrs"]["status"] == record.INTERRUPTED


def test_lock_file_goes_when_its_holder_exits(tmp_path):
    path = str(tmp_path / "run.h5")
    hold(path, then="").wait()
    assert not os.path.exists(path + sidecars.LOCK)
    sidecars.lock(path)
    sidecars.lock(path)             # once per process
    assert "pid %d on" % os.getpid() in open(path + sidecars.LOCK).read()
    sidecars.unlock(path)
    assert not os.path.exists(path + sidecars.LOCK)


def test_continuation_starts_from_the_checkpoints_rows(tmp_path):
    path = str(tmp_path / "run.h5")
    old = new(path)
    for step in (10, 20, 30):     # the checkpoint was at step 20: row 30 must go
        old.log(**{**ROW, "step": step})
    rows = {name: [1.0, 1.0] for name in record.METRICS}
    rows["step"] = [10, 20]
    new(path, rows=rows).log(**{**ROW, "step": 40})
    assert list(record.read(path)["metrics"]["step"]) == [10, 20, 40]
    with pytest.raises(ValueError, match="rows lack"):
        new(path, rows={"step": [1]})
    assert sorted(os.listdir(tmp_path)) == ["run.h5", "run.h5.lock"]    # no half-made file


def test_first_noted_failure_is_the_status(tmp_path):
    path = str(tmp_path / "run.h5")
    rec = new(path)
    assert sidecars.failure(path) is None
    assert sidecars.note_failure(path, 2, ValueError("bad batch")) is True
    assert sidecars.note_failure(path, 3, RuntimeError("peer died")) is False   # an echo
    assert record.read(path)["attrs"]["status"] == "failed: rank 2: ValueError: bad batch"
    rec.fail("RuntimeError: rank 0's consequence")
    assert record.read(path)["attrs"]["status"] == "failed: rank 2: ValueError: bad batch"
    assert sorted(os.listdir(tmp_path)) == ["run.h5", "run.h5.failed", "run.h5.lock"]


def test_a_completed_record_ignores_a_late_note(tmp_path):
    path = str(tmp_path / "run.h5")
    new(path)._status("completed")
    sidecars.note_failure(path, 1, OSError("after the end"))
    assert record.read(path)["attrs"]["status"] == "completed"


def test_a_reader_holding_the_record_neither_stops_the_writer_nor_sees_it_change(tmp_path):
    """A notebook keeps ``h5py.File(path)`` open (HDF5's shared lock held): every write
    still succeeds; the reader keeps the version it opened; reopening shows the rest."""
    path = str(tmp_path / "run.h5")
    rec = new(path)
    rec.log(**{**ROW, "step": 1})
    holder = subprocess.Popen(
        [sys.executable, "-c", "import h5py, sys\n"
         f"f = h5py.File({path!r}, 'r'); print('held', flush=True); sys.stdin.readline()\n"
         "print(len(f['metrics/step']), f.attrs['status'], flush=True)"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    rec.log(**{**ROW, "step": 2})
    rec.complete({name: [0.0] * 4 for name in record.RANK_FIELDS}, np.ones(3))
    holder.stdin.write("\n")
    holder.stdin.flush()
    assert holder.stdout.readline() == f"1 {record.INTERRUPTED}\n"
    assert holder.wait(timeout=30) == 0
    done = record.read(path)
    assert done["metrics"]["step"].tolist() == [1.0, 2.0]
    assert done["attrs"]["status"] == "completed" and done["final"]["params"].tolist() == [1, 1, 1]


def test_a_failed_write_leaves_the_last_version(tmp_path):
    path = str(tmp_path / "run.h5")
    rec = new(path)
    rec.log(**ROW)
    with pytest.raises(ValueError, match="lacks"):
        rec.log(step=2.0)
    with pytest.raises(RuntimeError, match="disk gone"):
        with rec.edit():
            rec.log(**{**ROW, "step": 3})
            rec.attribute("note", "half")
            raise RuntimeError("disk gone")
    done = record.read(path)
    assert done["metrics"]["step"].tolist() == [1.0] and "note" not in done["attrs"]
    assert sorted(os.listdir(tmp_path)) == ["run.h5", "run.h5.lock"]
    with rec.edit():                  # one version for several writes
        rec.log(**{**ROW, "step": 4})
        rec.attribute("note", "whole")
    done = record.read(path)
    assert done["metrics"]["step"].tolist() == [1.0, 4.0] and done["attrs"]["note"] == "whole"


def created_names(directory, action):
    """The names ``action()`` creates in ``directory`` (opened with O_CREAT) and renames
    into it, as the kernel reports them (inotify's IN_CREATE and IN_MOVED_TO)."""
    import ctypes
    import struct
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK)
    assert fd >= 0, os.strerror(ctypes.get_errno())
    created, moved = 0x100, 0x80
    try:
        assert libc.inotify_add_watch(fd, str(directory).encode(), created | moved) >= 0
        action()
        events, data = [], b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                break
            data += chunk
        while data:
            _, mask, _, size = struct.unpack_from("iIII", data)
            name = data[16:16 + size].rstrip(b"\0").decode()
            events.append(("created" if mask & created else "renamed", name))
            data = data[16 + size:]
        return events
    finally:
        os.close(fd)


def test_a_reader_never_meets_a_record_name_holding_less_than_a_whole_version(tmp_path):
    """The record's own name appears only by a rename of a whole version over it: checking
    that ``--out`` can be written (rank 0, in ``prepare``) creates other names. (It once
    created the record empty: a reader watching a study met a 0-byte ``.h5``.)"""
    path = str(tmp_path / "run.h5")

    def start_a_run():
        prepare.writable(path)
        new(path).log(**ROW)

    events = created_names(tmp_path, start_a_run)
    assert ("renamed", "run.h5") in events
    assert ("created", "run.h5") not in events, events
    assert all(what == "renamed" for what, name in events if name == "run.h5")
