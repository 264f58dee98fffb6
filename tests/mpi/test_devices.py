"""Every family gives the same result wherever it runs.

Places: the CPU through the staging path (``MPISGD_STAGING=always``: every
buffer through a host copy, as device buffers go to an MPI that is not
CUDA-aware), and a GPU shared by all ranks (``device="cuda"``: the model,
its optimizer state, the algorithm's buffers and the batches on the device;
skipped without CUDA). Each is compared with the plain CPU run: bitwise for
the staged CPU run (same arithmetic, other buffers), and within rtol 1e-10
in float64 on a GPU (cuBLAS sums the 6-term dot products and the gradient
in another order: a few ulps a step, 12 steps).

Algorithms with a centre or a server run on pairs of ranks (a centre and one worker),
where the order of messages, and so the result, is deterministic.
"""
import pytest
import torch
from mpi4py import MPI

import mpisgd
from helpers import D, regression_batch, regression_model

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
STEPS, ETA = 12, 0.05

#: name -> (algorithm, options, ranks per group: None = the whole world)
FAMILIES = {
    "sync": ("sync", {"bucket_mb": 1e-5}, None),
    "local": ("local", {"tau": 3}, None),
    "easgd": ("easgd", {"tau": 2}, None),
    "easgd-rank0": ("easgd", {"tau": 2, "center": "rank0"}, None),
    "gossip": ("gossip", {"topology": "ring"}, None),
    "cooperative": ("cooperative", {"topology": "easgd", "tau": 2}, None),
    "ps-sync": ("ps-sync", {}, 2),
    "k-sync": ("k-sync", {"k": 1}, 2),
    "async": ("async", {}, 2),
    "async-easgd": ("async-easgd", {"tau": 2, "center": "dedicated"}, 2),
    "eamsgd": ("eamsgd", {"tau": 2, "center": "dedicated"}, 2),
    "downpour": ("downpour", {"tau": 2, "center": "dedicated"}, 2),
}


def group(ranks):
    world = MPI.COMM_WORLD
    return world.Dup() if ranks is None else world.Split(world.rank // ranks, world.rank)


def run(family: str, device, monkeypatch, staging: str) -> torch.Tensor:
    """``family`` on the regression problem on ``device`` (``None``: where the model is, the
    CPU); the consensus after finish(), on the CPU."""
    monkeypatch.setenv("MPISGD_STAGING", staging)
    name, options, ranks = FAMILIES[family]
    comm = group(ranks)
    if ranks is not None and comm.size != ranks:
        comm.Free()
        pytest.skip("needs an even number of ranks (pairs of a centre and a worker)")
    model = regression_model(torch.linspace(-1.0, 1.0, D, dtype=torch.float64))
    opt = torch.optim.SGD(model.parameters(), lr=ETA)
    algo = mpisgd.build(name, model, opt, comm=comm, device=device, **options)
    where = algo.device
    assert all(p.device == where for p in model.parameters())
    assert algo.flat.data.device == algo.flat.grad.device == where
    if not algo.is_worker:
        algo.serve()
    else:
        for step in range(STEPS):
            A, b = (t.to(where) for t in regression_batch(algo.worker_index, step))
            opt.zero_grad(set_to_none=False)
            (0.5 * ((model(A).squeeze(1) - b) ** 2).mean()).backward()
            algo.step()
        algo.finish()
    theta = algo.consensus()
    assert theta.device == where
    algo.close()
    comm.Free()
    return theta.cpu()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("family", FAMILIES)
def test_staged_through_host_buffers_equals_the_plain_run(family, monkeypatch):
    plain = run(family, None, monkeypatch, "never")
    staged = run(family, None, monkeypatch, "always")
    assert torch.equal(plain, staged)


@CUDA
@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("family", FAMILIES)
def test_on_a_shared_gpu_equals_the_cpu(family, monkeypatch):
    cpu = run(family, None, monkeypatch, "never")
    gpu = run(family, "cuda", monkeypatch, "auto")
    torch.testing.assert_close(gpu, cpu, rtol=1e-10, atol=1e-12)


@pytest.mark.mpi(min_size=2)
def test_cuda_without_a_gpu_is_a_value_error_on_every_rank():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    model = regression_model(torch.zeros(D, dtype=torch.float64))
    opt = torch.optim.SGD(model.parameters(), lr=ETA)
    with pytest.raises(ValueError, match=r"^device cuda: no GPU is visible"):
        mpisgd.build("local", model, opt, comm=MPI.COMM_WORLD, device="cuda")
    MPI.COMM_WORLD.Barrier()          # every rank got here: nobody was left waiting


@pytest.mark.mpi(min_size=2)
def test_local_ranks_come_from_a_shared_memory_split():
    from mpisgd.device import bind, node_layout
    world = MPI.COMM_WORLD
    local_rank, local_size = node_layout(world)
    layout = world.allgather((MPI.Get_processor_name(), local_rank, local_size))
    for host in {h for h, _, _ in layout}:
        mine = [(r, s) for h, r, s in layout if h == host]
        assert sorted(r for r, _ in mine) == list(range(len(mine)))
        assert {s for _, s in mine} == {len(mine)}
    where = bind(world, "auto", gpus=0)
    assert where.device == torch.device("cpu") and where.local_rank == local_rank


class _BusyBackward(torch.autograd.Function):
    """Identity whose backward keeps the GPU busy (a lower layer's long backward)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        torch.cuda._sleep(20_000_000)     # about 10 ms of device time
        return grad


@CUDA
@pytest.mark.mpi(min_size=2)
def test_sync_staged_bucket_copies_overlap_the_rest_of_backward(monkeypatch):
    """The top layer's gradient bucket is copied to the host on the side stream while the
    lower layers' backward still runs on the compute stream (CUDA timing events)."""
    monkeypatch.setenv("MPISGD_STAGING", "always")
    torch.manual_seed(0)
    # three layers of 256 kB weights: at bucket_mb 0.2 a bucket each (a bucket never splits
    # a parameter; two layers made two buckets), checked on the CPU too (test_sync.py)
    top, middle, bottom = (torch.nn.Linear(256, 256) for _ in range(3))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bottom, self.middle, self.top = bottom, middle, top

        def forward(self, x):
            return self.top(self.middle(_BusyBackward.apply(self.bottom(x))))

    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    algo = mpisgd.build("sync", model, opt, comm=MPI.COMM_WORLD, device="cuda", bucket_mb=0.2)
    assert len(algo.flat.buckets) >= 3
    x = torch.randn(64, 256, device=algo.device)
    for _ in range(2):                  # the second step is measured (first: allocations)
        opt.zero_grad(set_to_none=False)
        algo.comm.boundary.copy_seconds()          # empties the list of timed copies
        start = torch.cuda.Event(enable_timing=True)
        start.record()
        model(x).square().mean().backward()
        backward_done = torch.cuda.Event(enable_timing=True)
        backward_done.record()
        algo.step()
        torch.cuda.synchronize()
    first_copy_start, first_copy_end, _ = algo.comm.boundary.spans.pairs[0]
    assert start.elapsed_time(first_copy_end) < start.elapsed_time(backward_done) - 5.0, \
        "bucket 0's device-to-host copy did not finish while backward was still computing"
    assert algo.comm.counters()["staging_time"] > 0
    algo.close()


@pytest.mark.mpi(min_size=2)
def test_a_failure_while_placing_on_one_rank_ends_every_rank(monkeypatch, capfd):
    """Say the GPU of rank 1 is out of memory as the flat buffer is made: every rank raises,
    naming rank 1 (no rank waits forever), and rank 1 shows its traceback."""
    import mpisgd.algorithms.binding as base
    world = MPI.COMM_WORLD
    real = base.ParamBuffer

    def flaky(*args, **kwargs):
        if world.rank == 1:
            raise RuntimeError("CUDA out of memory (simulated on rank 1)")
        return real(*args, **kwargs)

    monkeypatch.setattr(base, "ParamBuffer", flaky)
    model = regression_model(torch.zeros(D, dtype=torch.float64))
    opt = torch.optim.SGD(model.parameters(), lr=ETA)
    with pytest.raises(ValueError, match="RuntimeError: CUDA out of memory"):
        mpisgd.build("local", model, opt, comm=world)
    if world.rank == 1:
        assert "[rank 1] Traceback" in capfd.readouterr().err
    world.Barrier()
