"""sync: equals single-process SGD on the union of the workers' batches.

Everything runs in float64. The MPI run and the oracle add the same numbers
in a different order (the Allreduce's tree against torch's mean over the
concatenated batch), so they agree to a few ulps per step: 1e-12 relative
over 20 steps is about 1e4 ulps of float64, far below any real
discrepancy (a wrong scale or a missed bucket shows at 1e-2).
"""
import pytest
import torch
import torch.nn.functional as F
from mpi4py import MPI

import mpisgd
from helpers import ATOL, RTOL, classifier, classifier_batch

STEPS = 20


def run_sync(steps=STEPS, momentum=0.9, comm=MPI.COMM_WORLD, **options):
    model = classifier(seed=comm.rank)          # rank 0's initial model is broadcast
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum)
    algo = mpisgd.build("sync", model, opt, comm=comm, **options)
    for step in range(steps):
        x, y = classifier_batch(comm.rank, step)
        opt.zero_grad(set_to_none=(step % 2 == 0))     # both zero_grad styles
        F.cross_entropy(model(x), y).backward()
        algo.step()
    algo.finish()
    return algo


def single_process(size, steps=STEPS, momentum=0.9):
    model = classifier(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum)
    for step in range(steps):
        batches = [classifier_batch(w, step) for w in range(size)]
        x = torch.cat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach()


def plain_sync(bucket_mb, comm=MPI.COMM_WORLD):
    """A classifier under sync with plain SGD (lr 0.1) on ``comm``."""
    model = classifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, opt, mpisgd.build("sync", model, opt, comm=comm, bucket_mb=bucket_mb)


@pytest.mark.mpi(min_size=2)
def test_sync_equals_sgd_on_union_of_batches(comm):
    algo = run_sync(comm=comm)
    expected = single_process(comm.size)
    theta = algo.consensus()
    assert torch.allclose(theta, expected, rtol=RTOL, atol=ATOL)
    assert algo.rounds == STEPS and algo.steps == STEPS


@pytest.mark.mpi(min_size=2)
def test_replicas_and_batchnorm_buffers_stay_identical():
    comm = MPI.COMM_WORLD
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6),
                                torch.nn.Linear(6, 3)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    algo = mpisgd.build("sync", model, opt, comm=comm, bucket_mb=1e-9)
    for step in range(5):
        x, y = classifier_batch(comm.rank, step)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        algo.step()
    for flat in (algo.flat.data, algo.flat.buffers):
        gathered = comm.allgather(flat.numpy().tobytes())
        assert all(g == gathered[0] for g in gathered)
    means = comm.allgather(model[1].running_mean.clone())
    assert not torch.equal(means[0], torch.zeros(6))


@pytest.mark.mpi(min_size=2)
def test_frozen_parameters_never_move():
    comm = MPI.COMM_WORLD
    model = classifier()
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    algo = mpisgd.build("sync", model, opt, comm=comm, bucket_mb=1e-9)
    frozen = comm.bcast(frozen)                   # rank 0's initial value everywhere
    for step in range(3):
        x, y = classifier_batch(comm.rank, step)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        algo.step()
    assert torch.equal(model[0].weight, frozen) and model[0].weight.grad is None


@pytest.mark.mpi(min_size=2)
def test_buckets_launch_during_backward():
    comm = MPI.COMM_WORLD
    model, opt, algo = plain_sync(bucket_mb=1e-9)
    x, y = classifier_batch(comm.rank, 0)
    F.cross_entropy(model(x), y).backward()
    assert len(algo.mean._handles) == len(algo.flat.buckets) - 1   # all but the last, in flight
    algo.step()


def test_half_precision_model_is_refused():
    model = classifier().half()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="float16 cannot be averaged"):
        mpisgd.build("sync", model, opt, comm=MPI.COMM_SELF)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("options", [
    dict(bucket_mb=1e-9),            # smaller than the smallest tensor: one bucket per parameter
    dict(bucket_mb=1e-4),            # a few parameters per bucket
    dict(bucket_mb=1e9, overlap=False),
])
def test_bucketed_overlap_equals_one_big_allreduce(comm, options):
    reference = run_sync(comm=comm, bucket_mb=1e9).flat.data    # one bucket larger than the model
    algo = run_sync(comm=comm, **options)
    if options["bucket_mb"] == 1e-9:
        assert len(algo.flat.buckets) == len(algo.flat.params)
    assert torch.allclose(algo.flat.data, reference, rtol=RTOL, atol=ATOL)


@pytest.mark.mpi(min_size=2)
def test_no_sync_accumulates_then_averages(comm):
    model, opt, algo = plain_sync(bucket_mb=1e-9, comm=comm)
    opt.zero_grad()
    with algo.no_sync():
        x, y = classifier_batch(comm.rank, 0)
        F.cross_entropy(model(x), y).backward()
    x, y = classifier_batch(comm.rank, 1)
    F.cross_entropy(model(x), y).backward()
    algo.step()
    expected = classifier()
    eopt = torch.optim.SGD(expected.parameters(), lr=0.1)
    eopt.zero_grad()
    for w in range(comm.size):
        for step in (0, 1):
            x, y = classifier_batch(w, step)
            (F.cross_entropy(expected(x), y) / comm.size).backward()
    eopt.step()
    want = torch.nn.utils.parameters_to_vector(expected.parameters()).detach()
    assert torch.allclose(algo.flat.data, want, rtol=RTOL, atol=ATOL)


@pytest.mark.mpi(min_size=2)
def test_second_backward_without_no_sync_is_an_error():
    model, _, algo = plain_sync(bucket_mb=1e9)
    x, y = classifier_batch(MPI.COMM_WORLD.rank, 0)
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(RuntimeError, match="no_sync"):
        F.cross_entropy(model(x), y).backward()
    algo.step()      # the first exchange still completes on every rank


@pytest.mark.mpi(min_size=2)
def test_parameter_unused_on_one_rank_keeps_collectives_in_order():
    """Rank 0 uses a branch the others skip: its hooks launch buckets the others
    launch in step(); with BatchNorm buffers in between, the order must still match."""
    comm = MPI.COMM_WORLD
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"extra": torch.nn.Linear(4, 3), "body": torch.nn.Sequential(
        torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.Linear(6, 3))}).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    algo = mpisgd.build("sync", model, opt, comm=comm, bucket_mb=1e-9)
    for step in range(4):
        x, y = classifier_batch(comm.rank, step)
        opt.zero_grad()
        out = model["body"](x) + (model["extra"](x) if comm.rank == 0 else 0.0)
        F.cross_entropy(out, y).backward()
        algo.step()
    for flat in (algo.flat.data, algo.flat.buffers):
        gathered = comm.allgather(flat.numpy().tobytes())
        assert all(g == gathered[0] for g in gathered)


def test_a_bucket_never_splits_a_parameter(comm):
    """Three 256 x 256 layers at bucket_mb 0.2 (a weight is 256 kB): a bucket each, as the
    GPU overlap test (test_devices.py) needs; two such layers make two."""
    for layers, buckets in ((2, 2), (3, 3)):
        model = torch.nn.Sequential(*(torch.nn.Linear(256, 256) for _ in range(layers)))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        algo = mpisgd.build("sync", model, opt, comm=comm, bucket_mb=0.2)
        assert len(algo.flat.buckets) == buckets
        algo.close()
