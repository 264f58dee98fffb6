"""Comm under mpiexec: closed forms on COMM_WORLD and on a Dup of it (STYLE 3, 11)."""
import pytest
import torch
from mpisgd import device_ops
from mpisgd.comm import DEVICE_OPS, Comm


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("staging", ["never", "always"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("yield_wait", [False, True])
@pytest.mark.parametrize("blocking", [False, True])
def test_allreduce_average_of_ranks(comm, staging, dtype, yield_wait, blocking):
    c = Comm(comm, staging=staging)
    c.yield_wait = yield_wait
    x = torch.ones(1000, dtype=dtype) * c.rank
    handle = c.iallreduce(x, average=True, blocking=blocking)
    assert handle.done == blocking or c.size == 1
    handle.wait()
    assert torch.equal(x, torch.full_like(x, (c.size - 1) / 2))
    assert c.bytes_sent == pytest.approx(2 * (c.size - 1) / c.size * x.numel() * x.element_size())


@pytest.mark.mpi(min_size=2)
def test_pending_buffer_is_refused_until_waited(comm):
    if comm.size == 1:
        pytest.skip("at size 1 an Allreduce completes at once: nothing stays pending")
    c = Comm(comm)
    x = torch.ones(10)
    handle = c.iallreduce(x[:6])
    with pytest.raises(RuntimeError, match="pending nonblocking"):
        c.iallreduce(x[4:])
    c.iallreduce(x[6:]).wait()          # disjoint memory is fine
    handle.wait()
    assert x[:6].tolist() == [c.size] * 6 and x[6:].tolist() == [c.size] * 4


@pytest.mark.mpi(min_size=2)
def test_one_buffer_sent_to_many_but_not_received_into(comm):
    """Sends only read: one snapshot may go to every rank at once (a server's broadcast);
    a receive into memory a pending send reads is refused."""
    if comm.size == 1:
        pytest.skip("needs a second rank")
    c = Comm(comm)
    if c.rank == 0:
        x = torch.arange(1000, dtype=torch.float64)
        sends = [c.isend(x, dest, 5) for dest in range(1, c.size)]
        with pytest.raises(RuntimeError, match="pending nonblocking"):
            c.irecv(x[10:20], 1, 6)
        for h in sends:
            h.wait()
    else:
        got = torch.zeros(1000, dtype=torch.float64)
        c.irecv(got, 0, 5).wait()
        assert torch.equal(got, torch.arange(1000, dtype=torch.float64))


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("staging", ["never", "always"])
def test_ring_isend_irecv(comm, staging):
    c = Comm(comm, staging=staging)
    out = torch.arange(5, dtype=torch.float64) + c.rank
    got = torch.zeros(5, dtype=torch.float64)
    recv = c.irecv(got, source=(c.rank - 1) % c.size, tag=3)
    send = c.isend(out, dest=(c.rank + 1) % c.size, tag=3)
    while not recv.test():
        pass
    send.wait()
    assert torch.equal(got, torch.arange(5, dtype=torch.float64) + (c.rank - 1) % c.size)
    assert c.bytes_sent == 5 * 8


@pytest.mark.mpi(min_size=2)
def test_bcast_from_root(comm):
    c = Comm(comm)
    x = torch.full((7,), float(c.rank))
    c.bcast(x, root=c.size - 1)
    assert torch.equal(x, torch.full((7,), float(c.size - 1)))


@pytest.mark.mpi(min_size=2)
def test_ranks_agree_on_how_to_wait(comm, monkeypatch):
    """One rank asking to yield makes all yield: blocking and nonblocking calls never mix."""
    monkeypatch.setenv("MPISGD_WAIT", "yield" if comm.rank == comm.size - 1 else "spin")
    c = Comm(comm)
    assert c.yield_wait is True
    x = torch.full((8,), 1.0)
    c.allreduce(x)
    assert torch.equal(x, torch.full((8,), float(comm.size)))


@pytest.mark.mpi(min_size=2)
def test_non_contiguous_tensor_refused_before_staging(comm):
    c = Comm(comm, staging="always")
    x = torch.ones(4, 4).t()
    with pytest.raises(ValueError, match="contiguous"):
        c.iallreduce(x)
    assert torch.equal(x, torch.ones(4, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_device_buffer_probe_agrees_on_every_rank(comm):
    c = Comm(comm)
    direct = c.probe_device_buffers(torch.device("cuda", 0))
    assert comm.allgather(direct) == [direct] * comm.size
    assert c.device_path("cuda:0") in ("host staging", "device buffers") or \
        c.device_path("cuda:0").startswith("device buffers (host staging for ")
    x = torch.full((1000,), float(comm.rank), device="cuda")
    c.allreduce(x, average=True)
    assert torch.allclose(x.cpu(), torch.full((1000,), (comm.size - 1) / 2))


@pytest.mark.parametrize("op", DEVICE_OPS)
def test_each_probe_is_right_on_host_buffers(comm, op):
    """The start-up probe of each operation (run on device buffers on a GPU) through the
    Comm's own operations: right on every rank, at every size (the probe of a CUDA-aware
    MPI must not fail for a reason of its own)."""
    c = Comm(comm)
    assert device_ops.works(c, op, "cpu") is True
    assert comm.allgather(device_ops.works(c, op, "cpu")) == [True] * comm.Get_size()


def test_an_mpi_that_cannot_read_device_memory_is_refused_or_staged(comm, monkeypatch):
    """No GPU needed: nothing touches device memory before the verdict. This MPI (the wheel's
    MPICH) says MPIX_Query_cuda_support() = 0: auto stages every operation; never, or
    MPISGD_CUDA_AWARE=1, is one ConfigError on every rank (rank 0's printed), not a crash
    inside MPI at the first step."""
    from mpisgd.errors import ConfigError
    from mpisgd.mpienv import cuda_support
    said, library = cuda_support()
    if said is not False:
        pytest.skip(f"this MPI does not say it lacks CUDA support ({said}, {library})")
    cuda = torch.device("cuda", 0)
    c = Comm(comm)
    assert c.probe_device_buffers(cuda) == frozenset() and c.device_path(cuda) == "host staging"
    assert c.device_path("cpu") == ""
    with pytest.raises(ConfigError, match=r"^MPISGD_STAGING=never, but this MPI cannot read "
                                          r"device memory \(.*MPIX_Query_cuda_support\(\) = 0\)"
                                          r": unset MPISGD_STAGING") as never:
        Comm(comm, staging="never").probe_device_buffers(cuda)
    assert never.value.echo == (comm.rank != 0)
    monkeypatch.setenv("MPISGD_CUDA_AWARE", "1")
    with pytest.raises(ConfigError, match=r"^MPISGD_CUDA_AWARE=1, but this MPI says it cannot "
                                          r"read device memory in this run"):
        Comm(comm).probe_device_buffers(cuda)


class _Gate:
    """Stands in for the CUDA event an operation on device memory waits for (no GPU here):
    ready after ``opens_after`` queries. Exercises Comm's queue of not-yet-posted operations."""

    def __init__(self, opens_after: int):
        self.left = opens_after

    def query(self) -> bool:
        self.left -= 1
        return self.left < 0

    def synchronize(self) -> None:
        self.left = -1


def _gated(c: Comm, gate_of):
    """Make operations on ``c`` wait for a gate, as on device data (``gate_of(tensor)``)."""
    c.boundary.ready = gate_of


@pytest.mark.mpi(min_size=2)
def test_queued_operations_post_in_creation_order(comm):
    """A collective whose data is not ready holds back the ones created after it (every rank
    must post collectives in one order); once ready, test() posts them, in order."""
    if comm.size == 1:
        pytest.skip("needs a peer")
    c = Comm(comm)
    first, second = torch.ones(8) * c.rank, torch.ones(8) * (c.rank + 1)
    gates = {first.data_ptr(): _Gate(3 if c.rank == 0 else 0)}
    _gated(c, lambda t: gates.get(t.data_ptr()))
    h1 = c.iallreduce(first)
    h2 = c.iallreduce(second)
    if c.rank == 0:
        assert not h1.posted and not h2.posted       # held behind the first one
    for _ in range(10):
        h2.test()
        h1.test()
    h1.wait()
    h2.wait()
    n = c.size
    assert torch.equal(first, torch.full((8,), n * (n - 1) / 2))
    assert torch.equal(second, torch.full((8,), n * (n + 1) / 2))


@pytest.mark.mpi(min_size=2)
def test_wait_posts_what_is_queued_behind_it(comm):
    """Request and reply: rank 0 queues a request whose data is not ready, then waits for the
    reply to it. The wait must post the request first, or both ranks wait forever."""
    if comm.size == 1:
        pytest.skip("needs a peer")
    c = Comm(comm)
    if c.rank == 0:
        reply = torch.zeros(4)
        answer = c.irecv(reply, 1, 7)                 # posted: nothing gates a receive here
        request = torch.arange(4.0)
        _gated(c, lambda t: _Gate(1000) if t is request else None)
        sent = c.isend(request, 1, 3)
        assert answer.posted and not sent.posted
        answer.wait()
        sent.wait()
        assert torch.equal(reply, torch.arange(4.0) * 2)
    elif c.rank == 1:
        got = torch.zeros(4)
        c.irecv(got, 0, 3).wait()
        c.isend(got * 2, 0, 7).wait()



@pytest.mark.mpi(min_size=2)
def test_unmatched_receives_are_cancelled(comm):
    """What a stopped run leaves posted (a server's next receive) is cancelled by
    cancel_receives(): done, nothing copied, nothing left in flight, and a later message
    with that tag goes to a later receive."""
    from mpisgd import comm as comm_module
    c = Comm(comm)
    if c.size < 2:
        return
    left = torch.zeros(3)
    lonely = c.irecv(left, source=(c.rank + 1) % c.size, tag=77)
    c.barrier()
    assert c.cancel_receives() == 1
    assert lonely.done and lonely.status.Is_cancelled() and torch.equal(left, torch.zeros(3))
    assert not [h for h in comm_module._IN_FLIGHT.values() if h._owner.mpi == comm]
    assert c.cancel_receives() == 0
    later = torch.zeros(3)
    recv = c.irecv(later, source=(c.rank - 1) % c.size, tag=77)
    c.isend(torch.full((3,), float(c.rank)), dest=(c.rank + 1) % c.size, tag=77).wait()
    recv.wait()
    assert torch.equal(later, torch.full((3,), float((c.rank - 1) % c.size)))
