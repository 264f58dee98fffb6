"""Mixed precision under mpiexec: a step fp16's gradient scaler skips still takes part in every
round (the skip forced by an infinite gradient on one rank, checked against a run written
here where that step's gradient is zero), and --precision bf16 end to end for sync, local and
a server family.

The scaler is torch's GradScaler on the CPU (the library takes one on any device; the command
line offers fp16 on GPUs only, where its kernels are fast): the skip and the rounds do not
depend on the device.
"""
import os

import h5py
import numpy as np
import pytest
import torch
from mpi4py import MPI

import mpisgd
from helpers import D, regression_loss, regression_model, train_record
from mpisgd.precision import Scaler

STEPS, BAD_STEP, BAD_RANK, LR = 8, 3, 1, 0.05


def x0():
    return torch.linspace(-1.0, 1.0, D, dtype=torch.float64)


def run(name, comm, scaled: bool, zeroed=(BAD_RANK,), **options):
    """``STEPS`` steps of ``name`` (plain SGD, no momentum). At ``BAD_STEP`` rank ``BAD_RANK``'s
    gradient gets an infinity (``scaled``: the scaler must skip the step) or the gradients of
    the ranks ``zeroed`` are zero (the reference: a skipped step of plain SGD moves nothing)."""
    model = regression_model(x0())
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    algo = mpisgd.build(name, model, opt, comm=comm, **options)
    scaler = Scaler("cpu") if scaled else None
    if scaled:
        algo.use_scaler(scaler)
    for step in range(STEPS):
        opt.zero_grad()
        loss = regression_loss(model, comm.rank, step)
        (scaler.scale(loss) if scaled else loss).backward()
        if step == BAD_STEP and scaled and comm.rank == BAD_RANK:
            model.weight.grad[0, 0] = float("inf")
        if step == BAD_STEP and not scaled and comm.rank in zeroed:
            model.weight.grad.zero_()
        algo.step()
    algo.finish()
    return algo, scaler


@pytest.mark.mpi(min_size=2)
def test_a_step_the_scaler_skips_on_one_rank_still_takes_its_rounds():
    """local SGD, tau 2: rank 1 skips step 3; every rank takes the same 4 rounds and the
    model is, bit for bit, the run where rank 1's step-3 gradient is zero (scaling by a power
    of two and back is exact)."""
    comm = MPI.COMM_WORLD
    algo, scaler = run("local", comm, scaled=True, tau=2)
    ref, _ = run("local", comm, scaled=False, tau=2)
    assert comm.allgather(algo.rounds) == [STEPS // 2] * comm.size
    assert comm.allgather(algo.steps) == [STEPS] * comm.size
    assert torch.equal(algo.flat.data, ref.flat.data)
    skipped = comm.allgather(scaler.skipped)
    assert skipped == [int(r == BAD_RANK) for r in range(comm.size)]
    assert comm.allgather(algo.stats()["skipped_steps"]) == skipped
    scales = comm.allgather(scaler.scaler.get_scale())
    assert scales[BAD_RANK] == 65536.0 / 2 and all(s == 65536.0 for r, s in enumerate(scales)
                                                    if r != BAD_RANK)
    algo.close()
    ref.close()


@pytest.mark.mpi(min_size=2)
def test_sync_skips_a_step_on_every_rank_together():
    """sync: the infinity is in the averaged gradient, so every rank skips step 3 and halves
    its scale; the replicas stay identical and equal, bit for bit, the run where every
    rank's step-3 gradient is zero (scaling by 2^16 before the mean and back is exact)."""
    comm = MPI.COMM_WORLD
    algo, scaler = run("sync", comm, scaled=True)
    ref, _ = run("sync", comm, scaled=False, zeroed=range(comm.size))
    assert comm.allgather(scaler.skipped) == [1] * comm.size
    assert len(set(comm.allgather(scaler.scaler.get_scale()))) == 1
    mine = algo.flat.data.clone()
    assert all(torch.equal(t, mine) for t in comm.allgather(mine))
    assert torch.equal(mine, ref.flat.data)
    algo.close()
    ref.close()


@pytest.mark.mpi(min_size=2)
def test_the_scaler_state_goes_through_a_checkpoint():
    """state_dict() carries the scale, its growth tracker and the skipped count; a fresh
    algorithm with a scaler takes them back and goes on as the first would."""
    comm = MPI.COMM_WORLD
    algo, scaler = run("local", comm, scaled=True, tau=2)
    state = algo.state_dict()
    model = regression_model(x0())
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    again = mpisgd.build("local", model, opt, comm=comm, tau=2)
    fresh = Scaler("cpu")
    again.use_scaler(fresh)
    again.load_state_dict(state)
    assert fresh.skipped == scaler.skipped and fresh.state_dict()["scaler"] == \
        scaler.state_dict()["scaler"]
    assert torch.equal(again.flat.data, algo.flat.data)
    algo.close()
    again.close()


def refuses_a_scaler(name, match):
    """Build ``name`` on every rank; ``use_scaler`` raises ``match``; then close it."""
    model = regression_model(x0())
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    algo = mpisgd.build(name, model, opt, comm=MPI.COMM_WORLD)
    with pytest.raises(ValueError, match=match):
        algo.use_scaler(Scaler("cpu"))
    if algo.is_worker:
        algo.finish()
    else:
        algo.serve()
    algo.close()


@pytest.mark.mpi(min_size=2)
def test_eamsgd_refuses_a_gradient_scaler():
    """EAMSGD's fused step reads the gradients itself: a scaler could not unscale them."""
    refuses_a_scaler("eamsgd", "eamsgd: its update reads the gradients itself")


@pytest.mark.mpi(min_size=2)
def test_a_server_family_refuses_a_gradient_scaler():
    """The servers step the model: a worker's scaler could not skip their step."""
    refuses_a_scaler("ps-sync", "the server steps the model with its own optimizer")


@pytest.mark.mpi(min_size=3)
@pytest.mark.parametrize("algo, extra", [("sync", {}), ("local", {"tau": 3}), ("ps-sync", {})])
def test_bf16_trains_close_to_fp32_with_fp32_parameters(shared_dir, algo, extra):
    """--precision bf16 (autocast on the CPU): the parameters stay float32, the run learns,
    and its model is within bf16's rounding of the fp32 run's (8 bits of mantissa: 1e-2)."""
    flags = dict(algo=algo, steps=16, log_every=8, model="mlp", **extra)
    out32, _ = train_record(shared_dir, f"{algo}-fp32", **flags)
    out16, summary = train_record(shared_dir, f"{algo}-bf16", precision="bf16", **flags)
    if MPI.COMM_WORLD.rank != 0:
        return
    with h5py.File(out32, "r") as a, h5py.File(out16, "r") as b:
        p32, p16 = a["final"]["params"][()], b["final"]["params"][()]
        assert p16.dtype == np.float32
        assert 0 < np.abs(p16 - p32).max() < 2e-2
        loss = b["metrics"]["train_loss"][()]
        assert loss[-1] < loss[0]
        assert list(b["ranks"]["skipped_steps"][()]) == [0] * MPI.COMM_WORLD.size
        np.testing.assert_array_equal(b["metrics"]["bytes_sent"][()], a["metrics"]["bytes_sent"][()])
    assert "fp16" not in summary.get("warning", "")


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@CUDA
@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("algo, extra", [("sync", {}), ("local", {"tau": 4})])
def test_fp16_on_a_gpu_trains_gpt_and_resumes(shared_dir, text, algo, extra):
    """--precision fp16 --device cuda (autocast and the scaler on the GPU) on gpt: the run
    learns, the record holds every rank's skipped steps, and a run resumed from its
    checkpoint at step 12 ends where the uninterrupted one does (deterministic kernels)."""
    flags = dict(algo=algo, model="gpt:1,32,2,16", data=f"text:{text}", steps=24, log_every=6,
                 batch_size=8, optimizer="adamw", lr=0.01, precision="fp16", device="cuda",
                 deterministic=True, checkpoint_every=12, **extra)
    full, summary = train_record(shared_dir, f"{algo}-fp16", **flags)
    again, _ = train_record(shared_dir, f"{algo}-fp16-resumed",
                      resume=os.path.join(shared_dir, f"{algo}-fp16.ckpt", "step-00000012"),
                      checkpoint_dir=os.path.join(shared_dir, f"{algo}-resumed.ckpt"), **flags)
    if MPI.COMM_WORLD.rank != 0:
        return
    with h5py.File(full, "r") as a, h5py.File(again, "r") as b:
        assert len(a["ranks"]["skipped_steps"][()]) == MPI.COMM_WORLD.size
        loss = a["metrics"]["test_loss"][()]
        assert loss[-1] < loss[0] and np.isfinite(a["final"]["params"][()]).all()
        np.testing.assert_allclose(b["final"]["params"][()], a["final"]["params"][()],
                                   rtol=1e-5, atol=1e-6)
    assert summary["perplexity"] > 1
