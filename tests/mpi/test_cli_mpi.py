"""The training driver end to end under mpiexec: the run record's schema, and report."""
import json
import os

import h5py
import numpy as np
import pytest
import torch
from mpi4py import MPI

from mpisgd.app import cli, train
from mpisgd.app.config import from_sources
from mpisgd.app.record import METRICS, RANK_FIELDS
from helpers import train_record as _train


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("algo, extra", [("sync", {}), ("local", {"tau": 4})])
def test_train_writes_the_documented_record(shared_dir, algo, extra):
    comm = MPI.COMM_WORLD
    out, summary = _train(shared_dir, algo, algo=algo, steps=40, log_every=10, **extra)
    if comm.rank != 0:
        assert summary == {}
        return
    with h5py.File(out, "r") as f:
        attrs = dict(f.attrs)
        assert attrs["status"] == "completed"
        assert attrs["world_size"] == comm.size and attrs["workers"] == comm.size
        assert attrs["mpi_library"].startswith(("MPICH", "Open MPI", "Intel"))
        assert json.loads(attrs["config"])["algo"] == algo
        for key in ("mpisgd_version", "started", "finished"):
            assert attrs[key]
        lengths = {f["metrics"][m].shape[0] for m in METRICS}
        assert lengths == {4}
        m = {k: f["metrics"][k][()] for k in METRICS}
        assert list(m["step"]) == [10, 20, 30, 40]
        assert np.all(np.diff(m["wall_time"]) > 0) and np.all(np.diff(m["bytes_sent"]) > 0)
        assert m["train_loss"][-1] < m["train_loss"][0]
        assert np.all((0 <= m["test_error"]) & (m["test_error"] <= 1))
        expected_rounds = 40 if algo == "sync" else 10
        assert m["rounds"][-1] == expected_rounds
        for name in RANK_FIELDS:
            assert f["ranks"][name].shape == (comm.size,)
        assert list(f["ranks"]["steps"][()]) == [40] * comm.size
        expected = "cuda" if torch.cuda.is_available() else "cpu"      # --device auto
        devices = list(f["ranks"]["device"].asstr()[()])
        assert len(devices) == comm.size and all(d.startswith(expected) for d in devices)
        hosts = list(f["ranks"]["host"].asstr()[()])
        assert len(hosts) == comm.size and all(hosts)
        assert json.loads(attrs["config"])["device"] == "auto"
        assert f["final"]["params"].dtype == np.float32
        assert f["final"]["params"].shape == (26122,)      # the default MLP on digits
    png = os.path.join(shared_dir, f"{algo}.png")
    assert cli.main(["report", out, "--out", png]) == 0
    assert os.path.getsize(png) > 10_000
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("algo, extra", [
    ("sync", {"compress": "int8"}),
    ("local", {"tau": 8, "outer": "nesterov", "outer_lr": 0.7, "outer_momentum": 0.9,
               "fragments": 2, "fragment_delay": 1, "compress": "fp16"})])
def test_a_compressed_run_records_its_bytes_and_whether_it_paid(shared_dir, algo, extra):
    comm = MPI.COMM_WORLD
    out, summary = _train(shared_dir, f"{algo}-compressed", algo=algo, steps=32, log_every=8,
                          **extra)
    if comm.rank != 0:
        return
    fmt = extra["compress"]
    assert summary["compression"].startswith(f"compression {fmt}: ")
    assert summary["compression"] in train.summary_line(summary)
    with h5py.File(out, "r") as f:
        assert f.attrs["status"] == "completed"
        assert f.attrs["compression"] == summary["compression"]
        c = {k: f["compress"][k][()] for k in f["compress"]}
        assert c["bytes"].shape == (comm.size,) and np.all(c["bytes"] > 0)
        ratio = c["bytes"].sum() / c["dense_bytes"].sum()
        assert ratio < (0.26 if fmt == "int8" else 0.51)
        assert np.all(c["dense_seconds"] > 0) and np.all(c["quiet_seconds"] > 0)
        if algo == "local":      # 4 rounds of 2 fragments; fragment 0's last (posted at
            # step 32) lands in finish() and replaces x; one final round of fragment 1
            assert list(f["streaming"]["fragments"][()]) == [2] * comm.size
            assert np.all(f["streaming"]["round_bytes_max"][()] > 0)
            assert list(c["rounds"]) == [9] * comm.size


@pytest.mark.mpi(min_size=3)
@pytest.mark.parametrize("algo", ["async-easgd", "eamsgd", "downpour"])
def test_dedicated_centre_run_records_the_centre(shared_dir, algo):
    """Rank 0 only serves; the record counts workers, and the centre's counters."""
    comm = MPI.COMM_WORLD
    out = os.path.join(shared_dir, f"{algo}.h5")
    plain = {} if algo == "eamsgd" else {"momentum": 0.0}   # eamsgd's momentum is --delta
    cfg = from_sources(None, dict(algo=algo, steps=40, log_every=10, out=out, threads=1, tau=2,
                                  **plain))
    summary = train.run(cfg, comm, quiet=True)
    comm.Barrier()
    if comm.rank != 0:
        return
    assert summary["workers"] == comm.size - 1 and summary["kernels"]
    with h5py.File(out, "r") as f:
        assert f.attrs["status"] == "completed" and f.attrs["workers"] == comm.size - 1
        m = {k: f["metrics"][k][()] for k in METRICS}
        assert list(m["step"]) == [10, 20, 30, 40] and list(m["rounds"]) == [5, 10, 15, 20]
        assert m["train_loss"][-1] < m["train_loss"][0]
        assert list(f["ranks"]["steps"][()]) == [0] + [40] * (comm.size - 1)
        centre = {k: f["center"][k][()] for k in f["center"]}
        kind = "push_pull" if algo == "downpour" else "push"
        assert list(centre[kind]) == [20] * (comm.size - 1)
        assert list(centre["sync"]) == [3] * (comm.size - 1)      # the 3 log points before the last
        assert list(centre["done"]) == [1] * (comm.size - 1)
        assert centre["exchanges_per_s"] > 0


@pytest.mark.mpi(min_size=3)
def test_dedicated_centre_shards_the_data_over_the_workers(shared_dir):
    comm = MPI.COMM_WORLD
    cfg = from_sources(None, dict(algo="async-easgd", steps=5, threads=1,
                                  out=os.path.join(shared_dir, "unused.h5")))
    data, shards, _, _ = train.prepare(cfg, comm)
    assert len(shards) == comm.size - 1                   # every sample has a worker
    assert sum(len(s) for s in shards) == len(data.y_train)


@pytest.mark.mpi(min_size=4)
@pytest.mark.parametrize("algo, servers", [("k-sync", 1), ("async", 2), ("k-batch-async", 1)])
def test_parameter_server_run_records_server_and_stragglers(shared_dir, algo, servers):
    """Ranks 0..S-1 serve; /server/* has the counters and the staleness histogram,
    /stragglers/* the injected delays per worker, /workers/abandoned the cancellations."""
    comm = MPI.COMM_WORLD
    out = os.path.join(shared_dir, f"{algo}-{servers}.h5")
    cfg = from_sources(None, dict(algo=algo, steps=30, log_every=10, out=out, threads=1,
                                  momentum=0.0, servers=servers, straggler="exp:0.002",
                                  comm_delay="0.0005", **({"k": 2} if "k-" in algo else {})))
    summary = train.run(cfg, comm, quiet=True)
    comm.Barrier()
    if comm.rank != 0:
        return
    workers = comm.size - servers
    assert summary["workers"] == workers
    with h5py.File(out, "r") as f:
        assert f.attrs["status"] == "completed" and f.attrs["workers"] == workers
        assert json.loads(f.attrs["config"])["options"]["straggler"] == "exp:0.002"
        m = {k: f["metrics"][k][()] for k in METRICS}
        assert m["train_loss"][-1] < m["train_loss"][0]
        assert list(f["ranks"]["steps"][()]) == [0] * servers + [30] * workers
        s = {k: f["server"][k][()] for k in f["server"]}
        assert list(s["grad"]) == list(s["applied"] + s["dropped"])
        assert s["staleness"].sum() == s["grad"].sum()
        assert s["updates"].shape == (servers,) and s["update_time"].shape == (s["updates"][0],)
        abandoned = f["workers"]["abandoned"][()]
        assert list(s["grad"] + abandoned) == [30] * workers
        d = {k: f["stragglers"][k][()] for k in f["stragglers"]}
        assert list(d["compute_count"]) == [30] * workers
        assert np.all(d["compute_delay"] > 0) and np.all(d["compute_max"] <= d["compute_delay"])
        assert list(d["comm_count"]) == list(s["grad"])        # one round per push
        assert d["comm_delay"] == pytest.approx(0.0005 * d["comm_count"])
        assert np.all(d["compute_drawn"] >= d["compute_delay"] - 1e-12)


@pytest.mark.mpi(min_size=4)
def test_a_compute_delay_cut_short_is_recorded_as_slept(shared_dir):
    """K-sync, K = 1: the first gradient ends every other worker's delay; what each worker
    spent in delays fits in the run's time, and the cuts are counted."""
    comm = MPI.COMM_WORLD
    out = os.path.join(shared_dir, "k1-cut.h5")
    cfg = from_sources(None, dict(algo="k-sync", k=1, steps=12, log_every=12, out=out, threads=1,
                                  momentum=0.0, straggler="exp:0.05"))
    train.run(cfg, comm, quiet=True)
    comm.Barrier()
    if comm.rank != 0:
        return
    with h5py.File(out, "r") as f:
        d = {k: f["stragglers"][k][()] for k in f["stragglers"]}
        wall = f["metrics"]["wall_time"][-1]
    assert np.all(d["compute_delay"] <= wall)
    assert d["compute_cut"].sum() > 0
    assert d["compute_drawn"].sum() > d["compute_delay"].sum()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("algo, extra", [("local", {"tau": 4}),
                                         ("local", {"tau": 4, "fragments": 2,
                                                    "fragment_delay": 1})])
def test_an_injected_link_delay_is_communication_time(shared_dir, algo, extra):
    """--comm-delay is a slow link: its seconds are in comm_time and wait_time, not in
    compute_time (as recorded per rank; compute_time = training time - comm_time)."""
    comm = MPI.COMM_WORLD
    out, _ = _train(shared_dir, f"link-{len(extra)}", algo=algo, steps=16, log_every=8,
                    comm_delay="0.02", **extra)
    if comm.rank != 0:
        return
    with h5py.File(out, "r") as f:
        r = {k: f["ranks"][k][()] for k in ("compute_time", "comm_time", "wait_time")}
        slept = f["stragglers"]["comm_delay"][()]
    assert np.all(slept >= 0.02 * 4 - 1e-9)          # at least 4 rounds of 20 ms
    floor = slept if not extra.get("fragment_delay") else 0.0   # overlapped: partly hidden
    assert np.all(r["comm_time"] >= floor) and np.all(r["wait_time"] >= floor)


@pytest.mark.mpi(min_size=2)
def test_stragglers_apply_to_every_algorithm(shared_dir):
    """A slow worker under sync SGD: the others wait for it; the delays are recorded."""
    comm = MPI.COMM_WORLD
    out = os.path.join(shared_dir, "slow-sync.h5")
    cfg = from_sources(None, dict(algo="sync", steps=12, log_every=12, out=out, threads=1,
                                  straggler="shifted-exp:0.002,0.001+slow:1=3"))
    train.run(cfg, comm, quiet=True)
    comm.Barrier()
    if comm.rank == 0:
        with h5py.File(out, "r") as f:
            d = {k: f["stragglers"][k][()] for k in f["stragglers"]}
            wait = f["ranks"]["wait_time"][()]
        assert list(d["compute_count"]) == [12] * comm.size
        assert np.all(d["compute_delay"] >= 12 * 0.002)
        assert d["compute_delay"][1] > 2 * d["compute_delay"][0]       # worker 1 is 3x slower
        assert wait[0] > wait[1]                   # worker 0 waits for worker 1 in the Allreduce


def _record(shared_dir, name, **flags):
    """Train with ``flags`` on every rank; rank 0 gets the record as a dict of arrays."""
    comm = MPI.COMM_WORLD
    out = os.path.join(shared_dir, f"{name}.h5")
    cfg = from_sources(None, dict(steps=48, log_every=12, out=out, threads=1, **flags))
    train.run(cfg, comm, quiet=True)
    comm.Barrier()
    if comm.rank != 0:
        return None
    with h5py.File(out, "r") as f:
        assert f.attrs["status"] == "completed"
        return {f"{g}/{k}": f[g][k][()] for g in f for k in f[g]}


@pytest.mark.mpi(min_size=4)
def test_gossip_run_records_consensus_distance_degrees_and_zeta(shared_dir):
    rec = _record(shared_dir, "gossip", algo="gossip", topology="exponential", overlap=True,
                  exchange="neighbor")     # (on 4 ranks the exponential graph is complete)
    if rec is None:
        return
    assert list(rec["metrics/step"]) == [12, 24, 36, 48]
    assert list(rec["metrics/rounds"]) == [12, 24, 36, 48]
    assert np.all(rec["metrics/consensus_distance"] > 0)          # gossip never agrees exactly
    degree = rec["gossip/out_degree"]
    assert list(degree) == list(rec["gossip/in_degree"]) and np.all(degree >= 2)
    assert list(rec["gossip/bytes_per_round"]) == list(degree * 26122 * 4)
    assert 0 < rec["gossip/zeta"][0] < 1
    assert rec["metrics/train_loss"][-1] < rec["metrics/train_loss"][0]
    assert rec["metrics/bytes_sent"][-1] == pytest.approx(
        48 * sum(rec["gossip/bytes_per_round"]), rel=1e-9)      # per round, every rank


@pytest.mark.mpi(min_size=2)
def test_local_average_has_zero_consensus_distance(shared_dir):
    rec = _record(shared_dir, "local0", algo="local", tau=4)
    if rec is not None:
        assert np.all(rec["metrics/consensus_distance"] == 0)   # log points fall on rounds


@pytest.mark.mpi(min_size=4)
@pytest.mark.parametrize("algo", ["local", "gossip", "easgd"])
def test_budget_schedule_runs_by_rounds_for_every_family(shared_dir, algo):
    """PR-SGD Algorithm 3 with worker 1 slowed 4x: the run is steps / tau rounds; the slow
    worker takes fewer local steps."""
    rec = _record(shared_dir, f"budget-{algo}", algo=algo, tau=4, schedule="budget",
                  straggler="shifted-exp:0.002,0.0005+slow:1=4")
    if rec is None:
        return
    assert list(rec["metrics/step"]) == [12, 24, 36, 48]
    assert list(rec["metrics/rounds"]) == [3, 6, 9, 12]
    steps = rec["ranks/steps"]
    assert steps[1] < min(s for w, s in enumerate(steps) if w != 1)
    assert rec["schedule/round_budget"][0] > 0


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("algo", ["local", "gossip", "easgd"])
def test_adacomm_records_tau_over_time_for_every_family(shared_dir, algo):
    rec = _record(shared_dir, f"adacomm-{algo}", algo=algo, tau=8, schedule="adacomm",
                  adacomm_interval=0.02, comm_delay=0.005)
    if rec is None:
        return
    tau, time_, loss = rec["schedule/tau"], rec["schedule/time"], rec["schedule/loss"]
    assert tau[0] == 8 and len(tau) == len(time_) == len(loss) >= 2
    assert np.all(np.diff(tau) <= 0) and np.all(np.diff(time_) > 0)
    for l in range(1, len(tau)):
        assert tau[l] == min(tau[l - 1], int(np.ceil(np.sqrt(loss[l] / loss[0]) * 8 - 1e-9)))


@pytest.mark.mpi(min_size=2)
def test_a_run_whose_loss_never_moves_is_flagged_in_the_summary_and_the_record(shared_dir):
    comm = MPI.COMM_WORLD
    out = os.path.join(shared_dir, "stalled.h5")
    cfg = from_sources(None, dict(algo="sync", lr=1e-7, steps=40, log_every=10, out=out,
                                  threads=1))
    summary = train.run(cfg, comm, quiet=True)
    good = os.path.join(shared_dir, "learns.h5")
    learned = train.run(from_sources(None, dict(algo="sync", steps=40, log_every=10, out=good,
                                                threads=1)), comm, quiet=True)
    comm.Barrier()
    if comm.rank != 0:
        return
    assert "stayed at its starting value" in summary["warning"]
    assert "warning: the training loss stayed" in train.summary_line(summary)
    with h5py.File(out, "r") as f:
        assert f.attrs["status"] == "completed"
        assert "stayed at its starting value" in f.attrs["warnings"]
    assert learned["warning"] == ""
    with h5py.File(good, "r") as f:
        assert "warnings" not in f.attrs


@pytest.mark.mpi(min_size=3)
@pytest.mark.parametrize("algo, extra", [("sync", {}), ("local", {"tau": 3}), ("ps-sync", {})])
def test_accumulating_4_batches_of_8_is_one_step_of_32(shared_dir, algo, extra):
    """--accumulate 4 --batch-size 8 against --batch-size 32 (the same samples in the same
    order): the same model to float32 rounding, the same rounds and bytes; the first three
    backward passes of a step communicate nothing."""
    comm = MPI.COMM_WORLD
    flags = dict(algo=algo, steps=12, log_every=6, model="mlp", **extra)
    out1, _ = _train(shared_dir, f"{algo}-32", batch_size=32, **flags)
    out4, _ = _train(shared_dir, f"{algo}-8x4", batch_size=8, accumulate=4, **flags)
    if comm.rank != 0:
        return
    with h5py.File(out1, "r") as a, h5py.File(out4, "r") as b:
        np.testing.assert_allclose(b["final"]["params"][()], a["final"]["params"][()],
                                   rtol=1e-4, atol=1e-6)
        for k in ("rounds", "bytes_sent", "step"):
            np.testing.assert_array_equal(b["metrics"][k][()], a["metrics"][k][()])
        np.testing.assert_allclose(b["metrics"]["train_loss"][()], a["metrics"]["train_loss"][()],
                                   rtol=1e-5)
        assert json.loads(b.attrs["config"])["accumulate"] == 4


@pytest.mark.mpi(min_size=2)
def test_the_rate_schedule_is_recorded_at_every_row(shared_dir):
    """--lr-schedule cosine --warmup 5: each row's lr is the rate of the step after it."""
    from mpisgd.app import lr
    comm = MPI.COMM_WORLD
    out, _ = _train(shared_dir, "cosine", algo="local", tau=2, steps=40, log_every=10,
                    lr=0.1, lr_schedule="cosine", warmup=5, lr_min=0.01)
    if comm.rank != 0:
        return
    with h5py.File(out, "r") as f:
        steps, rates = f["metrics"]["step"][()], f["metrics"]["lr"][()]
    f = lr.factor("cosine", 40, 5, 0.1)
    np.testing.assert_allclose(rates, [0.1 * f(int(s)) for s in steps], rtol=1e-9)
    assert rates[-1] == pytest.approx(0.01)



@pytest.mark.mpi(min_size=2)
def test_tensorboard_gets_every_row_the_record_gets(shared_dir):
    """--tensorboard DIR: one scalar per column of every row, at the row's step."""
    comm = MPI.COMM_WORLD
    board = os.path.join(shared_dir, "tb")
    out, _ = _train(shared_dir, "board", algo="local", tau=2, steps=20, log_every=5,
                    tensorboard=board)
    if comm.rank != 0:              # rank 0 writes the board
        return
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(board)
    events.Reload()
    with h5py.File(out, "r") as f:
        rows = {k: f["metrics"][k][()] for k in METRICS}
    assert sorted(events.Tags()["scalars"]) == sorted(f"metrics/{k}" for k in METRICS
                                                      if k != "step")
    for name in ("test_error", "train_loss", "lr", "bytes_sent"):
        scalars = events.Scalars(f"metrics/{name}")
        assert [s.step for s in scalars] == list(rows["step"].astype(int))
        np.testing.assert_allclose([s.value for s in scalars], rows[name], rtol=1e-6)
