"""Checkpoints, resume, preemption and divergence, through the real driver under mpiexec.

Every test runs :func:`mpisgd.app.train.run` on all ranks of COMM_WORLD
(the driver needs the whole world: records, log points, checkpoints), with
real files in a directory every rank shares.
"""
import os
import signal
import threading

import h5py
import numpy as np
import pytest
import torch
from mpi4py import MPI

from mpisgd.app import train
from mpisgd.app.config import from_sources
from mpisgd.app.stops import EXIT_DIVERGED, EXIT_INTERRUPTED, Diverged, Interrupted
from mpisgd.errors import ConfigError

STEPS, EVERY, LOG = 24, 12, 6


def _run(out, **flags):
    cfg = from_sources(None, {"steps": STEPS, "log_every": LOG, "out": out, "threads": 1, **flags})
    return train.run(cfg, MPI.COMM_WORLD, quiet=True)


def _final(path):
    """Rank 0's record: (status, final parameters, metrics, server/centre series)."""
    comm = MPI.COMM_WORLD
    comm.Barrier()
    out = None
    if comm.rank == 0:
        with h5py.File(path, "r") as f:
            groups = {g: {k: f[g][k][()] for k in f[g]} for g in f if g not in ("metrics", "final")}
            final = f["final"]["params"][()] if "final" in f else None
            out = (f.attrs["status"], final,
                   {k: f["metrics"][k][()] for k in f["metrics"]}, groups)
    return comm.bcast(out)


def _resumed_equals_uninterrupted(shared_dir, name, flags):
    full = os.path.join(shared_dir, f"{name}.h5")
    _run(full, checkpoint_every=EVERY, **flags)
    ckpt = os.path.join(shared_dir, f"{name}.ckpt")
    assert os.path.isfile(os.path.join(ckpt, f"step-{EVERY:08d}", "meta.json"))
    again = os.path.join(shared_dir, f"{name}-resumed.h5")
    _run(again, resume=os.path.join(ckpt, f"step-{EVERY:08d}"), checkpoint_every=EVERY,
         checkpoint_dir=os.path.join(shared_dir, f"{name}-resumed.ckpt"), **flags)
    return _final(full), _final(again)


#: Lock-step families: the continuation is the uninterrupted run, bit for bit.
BITWISE = {
    "sync": dict(algo="sync"),
    "local": dict(algo="local", tau=4),
    "local-time-varying": dict(algo="local", schedule="time-varying", tau=2),
    "local-adacomm": dict(algo="local", tau=4, schedule="adacomm", adacomm_interval=1e6),
    "local-momentum-average": dict(algo="local", tau=3, momentum_policy="average"),
    "easgd": dict(algo="easgd", tau=2),
    "easgd-rank0": dict(algo="easgd", tau=2, center="rank0"),
    "easgd-int8": dict(algo="easgd", tau=2, compress="int8"),
    "local-cosine-accumulate": dict(algo="local", tau=4, lr_schedule="cosine", warmup=3,
                                    accumulate=2),
    "local-adamw": dict(algo="local", tau=4, optimizer="adamw", lr=0.005, weight_decay=0.01),
    "local-bf16": dict(algo="local", tau=4, precision="bf16"),
    "sync-bf16-adamw-cosine": dict(algo="sync", precision="bf16", optimizer="adamw", lr=0.005,
                                   lr_schedule="cosine", warmup=4),
    "gossip": dict(algo="gossip", topology="ring"),
    "gossip-overlap": dict(algo="gossip", topology="ring", tau=3, overlap=True),
    "cooperative": dict(algo="cooperative", topology="ring", tau=2),
}


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("name", sorted(BITWISE))
def test_resumed_run_equals_the_uninterrupted_one_bitwise(shared_dir, name):
    (status, params, metrics, _), (status2, params2, metrics2, _) = \
        _resumed_equals_uninterrupted(shared_dir, name, BITWISE[name])
    assert status == status2 == "completed"
    assert np.array_equal(params, params2)
    for key in ("step", "train_loss", "test_error", "rounds", "bytes_sent"):
        assert np.array_equal(metrics[key], metrics2[key]), key
    assert np.all(np.diff(metrics2["wall_time"]) > 0)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("name", ["sync", "local", "gossip-overlap", "easgd",
                                  "local-momentum-average"])
def test_a_completed_run_extends_from_its_last_checkpoint_bitwise(shared_dir, name):
    """--checkpoint-every checkpoints the last step too, before the final synchronisation
    (local SGD's last averaging at step 18, not a multiple of tau; gossip's deferred round
    in flight): resuming with a larger --steps is the run that went there directly."""
    short, extended, direct = (os.path.join(shared_dir, f"{name}-{k}.h5")
                               for k in ("short", "extended", "direct"))
    _run(short, steps=18, checkpoint_every=100, **BITWISE[name])
    last = os.path.join(shared_dir, f"{name}-short.ckpt")
    assert os.listdir(last) == [f"step-{18:08d}"]
    assert _final(short)[0] == "completed"
    _run(extended, resume=last, checkpoint_dir=os.path.join(shared_dir, f"{name}-x.ckpt"),
         **BITWISE[name])
    _run(direct, **BITWISE[name])
    (status, params, metrics, _), (status2, params2, metrics2, _) = _final(direct), \
        _final(extended)
    assert status == status2 == "completed"
    assert np.array_equal(params, params2)
    for key in ("step", "train_loss", "test_loss", "test_error", "rounds", "bytes_sent",
                "consensus_distance"):
        assert np.array_equal(metrics[key], metrics2[key]), key


@pytest.mark.mpi(min_size=3)
@pytest.mark.parametrize("algo, flags", [("ps-sync", {}), ("async-easgd", dict(tau=2))])
def test_a_served_run_extends_from_its_last_checkpoint(shared_dir, algo, flags):
    """A centre checkpoints the last step at a rendezvous; the extension counts every
    exchange of the whole run once."""
    short, extended = (os.path.join(shared_dir, f"{algo}-{k}.h5") for k in ("short", "ext"))
    _run(short, algo=algo, steps=18, checkpoint_every=100, **flags)
    last = os.path.join(shared_dir, f"{algo}-short.ckpt")
    assert os.listdir(last) == [f"step-{18:08d}"]
    _run(extended, algo=algo, resume=last, **flags)
    status, _, metrics, groups = _final(short)
    status2, params2, metrics2, groups2 = _final(extended)
    assert status == status2 == "completed" and np.isfinite(params2).all()
    assert list(metrics["step"]) == [6, 12, 18] and list(metrics2["step"]) == [6, 12, 18, 24]
    if algo == "ps-sync":
        assert groups2["server"]["updates"] == STEPS
    else:
        assert list(groups2["center"]["push"]) == [STEPS // 2] * (MPI.COMM_WORLD.size - 1)


@pytest.mark.mpi(min_size=2)
def test_a_budget_run_checkpoints_and_resumes_at_the_same_round_on_every_rank(shared_dir):
    """Under a wall-clock budget ranks take different numbers of steps per round (worker 0
    is three times slower): checkpoints count rounds x tau, the same on every rank, before
    and after the resume (a resumed rank counting its own steps would stop alone)."""
    flags = dict(algo="local", tau=2, schedule="budget", round_budget=0.004,
                 straggler="slow:0=3", checkpoint_every=8)
    full = os.path.join(shared_dir, "budget.h5")
    _run(full, **flags)
    again = os.path.join(shared_dir, "budget-resumed.h5")    # from 16 on to 32: one periodic
    _run(again, resume=os.path.join(shared_dir, "budget.ckpt", f"step-{16:08d}"), steps=32,
         checkpoint_dir=os.path.join(shared_dir, "budget-resumed.ckpt"), **flags)
    (status, _, metrics, _), (status2, params2, metrics2, _) = _final(full), _final(again)
    assert status == status2 == "completed" and np.isfinite(params2).all()
    assert list(metrics2["step"]) == list(metrics["step"]) + [30, 32]
    assert metrics["rounds"][-1] == STEPS // 2 and metrics2["rounds"][-1] == 16
    assert sorted(os.listdir(os.path.join(shared_dir, "budget-resumed.ckpt"))) == \
        [f"step-{24:08d}", f"step-{32:08d}"]           # and the last step's


@pytest.mark.mpi(min_size=3)
@pytest.mark.parametrize("name, flags", [("ps-sync", dict(algo="ps-sync")),
                                         ("k-sync-all", dict(algo="k-sync"))])
def test_resumed_parameter_server_equals_the_uninterrupted_one(shared_dir, name, flags):
    """The server sums a version's gradients in arrival order, which differs from run to
    run (so two uninterrupted runs differ in the last bits too): equal to rounding."""
    (status, params, metrics, groups), (status2, params2, metrics2, groups2) = \
        _resumed_equals_uninterrupted(shared_dir, name, flags)
    assert status == status2 == "completed"
    np.testing.assert_allclose(params2, params, rtol=1e-5, atol=1e-6)
    assert np.array_equal(metrics["bytes_sent"], metrics2["bytes_sent"])
    assert groups["server"]["updates"] == groups2["server"]["updates"] == STEPS


@pytest.mark.mpi(min_size=3)
@pytest.mark.parametrize("algo, group, counter", [("async", "server", "applied"),
                                                  ("k-async", "server", "applied"),
                                                  ("async-easgd", "center", "push"),
                                                  ("eamsgd", "center", "push"),
                                                  ("downpour", "center", "push_pull")])
def test_async_restart_keeps_the_counters_consistent(shared_dir, algo, group, counter):
    """Nothing applied twice, nothing acknowledged lost: every worker's gradients or
    pushes of the whole run, before and after the restart, counted once at the centre."""
    flags = {"async": dict(momentum=0.0), "k-async": dict(momentum=0.0, k=1),
             "async-easgd": dict(tau=2), "eamsgd": dict(tau=2),
             "downpour": dict(tau=2, momentum=0.0)}[algo]
    flags["algo"] = algo
    (status, _, metrics, groups), (status2, params2, metrics2, groups2) = \
        _resumed_equals_uninterrupted(shared_dir, algo, flags)
    assert status == status2 == "completed"
    per_step = 1 if group == "server" else 0.5
    workers = MPI.COMM_WORLD.size - 1
    assert list(groups2[group][counter]) == list(groups[group][counter]) == \
        [STEPS * per_step] * workers
    # a rendezvous at each log point before the last, and one for the last step's checkpoint
    assert list(groups2[group]["sync"]) == [STEPS // LOG - 1 + 1] * workers
    assert list(metrics2["step"]) == list(metrics["step"])
    assert np.isfinite(params2).all() and metrics2["train_loss"][-1] < metrics2["train_loss"][0]


@pytest.mark.mpi(min_size=2)
def test_resume_refuses_an_option_that_changes_the_math(shared_dir):
    out = os.path.join(shared_dir, "a.h5")
    _run(out, algo="local", tau=4, checkpoint_every=EVERY)
    ckpt = os.path.join(shared_dir, "a.ckpt")
    with pytest.raises(ConfigError, match=r"--tau was 4 in the checkpointed run, now 2"):
        _run(os.path.join(shared_dir, "b.h5"), algo="local", tau=2, resume=ckpt)
    with pytest.raises(ConfigError, match=r"nothing is left to do; raise --steps"):
        _run(os.path.join(shared_dir, "c.h5"), algo="local", tau=4, resume=ckpt, steps=EVERY)
    # --steps may change: the newest checkpoint (the last step, 24) continues to 30
    _run(os.path.join(shared_dir, "d.h5"), algo="local", tau=4, resume=ckpt, steps=30)
    status, _, metrics, _ = _final(os.path.join(shared_dir, "d.h5"))
    assert status == "completed" and list(metrics["step"]) == [6, 12, 18, 24, 30]


def _signal_later(seconds: float, signum=signal.SIGUSR1):
    """Signal this process after ``seconds``, as a batch system would (rank 1 only)."""
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signum))
    timer.daemon = True
    timer.start()
    return timer


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("algo, flags", [("sync", {}), ("local", dict(tau=4)),
                                         ("async", dict(momentum=0.0))])
def test_a_signal_on_one_rank_stops_every_rank_with_a_checkpoint_that_resumes(
        shared_dir, algo, flags):
    comm = MPI.COMM_WORLD
    out = os.path.join(shared_dir, f"sig-{algo}.h5")
    timer = _signal_later(1.0, signal.SIGTERM if algo == "sync" else signal.SIGUSR1) \
        if comm.rank == 1 else None
    try:
        with pytest.raises(Interrupted) as stopped:
            _run(out, algo=algo, steps=100_000, log_every=20, **flags)
    finally:
        if timer is not None:
            timer.cancel()
    assert stopped.value.exit_code == EXIT_INTERRUPTED
    name = "SIGTERM" if algo == "sync" else "SIGUSR1"
    status, _, metrics, _ = _final(out)
    assert status.startswith(f"interrupted: {name} at step ") and ".ckpt/step-" in status
    step = int(status.split(" at step ")[1].split(",")[0])
    assert status == str(stopped.value) and step >= 1
    if algo == "async":
        assert step % 20 == 0                  # a centre stops at a log point
    ckpt = status.split("checkpoint ")[1]
    resumed = os.path.join(shared_dir, f"sig-{algo}-resumed.h5")
    _run(resumed, algo=algo, steps=step + 8, log_every=20, resume=ckpt, **flags)
    status2, params2, metrics2, _ = _final(resumed)
    assert status2 == "completed" and metrics2["step"][-1] == step + 8
    if algo != "async":                        # lock-step: equal to the run never stopped
        straight = os.path.join(shared_dir, f"sig-{algo}-straight.h5")
        _run(straight, algo=algo, steps=step + 8, log_every=20, **flags)
        assert np.array_equal(_final(straight)[1], params2)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("algo, flags", [("sync", {}), ("local", dict(tau=4)),
                                         ("gossip", {}), ("async-easgd", dict(tau=2)),
                                         ("ps-sync", {}), ("async", {})])
def test_a_diverged_run_fails_on_every_rank_within_one_log_interval(shared_dir, algo, flags):
    if algo in ("ps-sync", "async", "async-easgd") and MPI.COMM_WORLD.size < 3:
        pytest.skip("needs a server and two workers")
    out = os.path.join(shared_dir, f"nan-{algo}.h5")
    with pytest.raises(Diverged) as diverged:
        _run(out, algo=algo, lr=1e4, steps=60, log_every=10, **flags)
    assert diverged.value.exit_code == EXIT_DIVERGED
    status, _, metrics, _ = _final(out)
    assert status == str(diverged.value)
    assert status.startswith("failed: non-finite ")
    assert len(metrics["step"]) == 1            # the first log point stopped it
    what = status.split("failed: non-finite ")[1]
    if what.startswith("loss"):
        assert 1 <= int(what.split("at step ")[1].split(" ")[0]) <= 10


@pytest.mark.mpi(min_size=2)
def test_on_nonfinite_warn_goes_on(shared_dir):
    out = os.path.join(shared_dir, "warn.h5")
    with pytest.warns(UserWarning, match="non-finite loss at step"):
        _run(out, algo="sync", lr=1e4, steps=20, log_every=10, on_nonfinite="warn")
    status, _, metrics, _ = _final(out)
    assert status == "completed" and len(metrics["step"]) == 2
    if MPI.COMM_WORLD.rank == 0:                 # what stderr said stays with the figures
        with h5py.File(out, "r") as f:
            kept = f.attrs["warnings"].splitlines()
        assert kept[0].startswith("non-finite loss at step ") and \
            kept[0].endswith("(--on-nonfinite warn: training goes on)")


def test_checkpoint_files_load_without_unpickling_code(shared_dir):
    comm = MPI.COMM_WORLD
    out = os.path.join(shared_dir, "safe.h5")
    _run(out, algo="sync", checkpoint_every=EVERY)
    path = os.path.join(shared_dir, "safe.ckpt", f"step-{EVERY:08d}", f"rank-{comm.rank:05d}.pt")
    state = torch.load(path, weights_only=True)
    assert state["driver"]["step"] == EVERY and state["algorithm"]["steps"] == EVERY
