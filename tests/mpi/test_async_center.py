"""async-easgd, eamsgd, downpour: the centre protocol and the update rules.

* Counter and sum invariants with uneven worker speeds and workers that
  finish at different times: every push applied exactly once.
* One worker (a centre plus one worker, or rank 0 alone holding the centre)
  equals the sequential rule written out here.
* Convergence on a quadratic; EASGD stable where DOWNPOUR diverges.
"""
import time

import pytest
import torch
from mpi4py import MPI

import mpisgd
from mpisgd.server.center import CenterClient, LocalCenter
from helpers import ATOL, D, RTOL, centered_trace, regression_batch, regression_loss, \
    regression_model

ETA = 0.05
ALGOS = ["async-easgd", "eamsgd", "downpour"]


def x0():
    return torch.linspace(-1.0, 1.0, D, dtype=torch.float64)


def build(name, comm, lr=ETA, **options):
    model = regression_model(x0())
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return mpisgd.build(name, model, opt, comm=comm, **options), model, opt


@pytest.fixture
def audited(monkeypatch):
    """Workers keep the float64 sum of the updates they push to the centre (a spy on the
    clients: the library keeps only the count)."""
    for cls in (CenterClient, LocalCenter):
        for verb in ("push", "push_pull"):
            original = getattr(cls, verb)

            def spy(self, delta, _original=original):
                self.audit_total = getattr(self, "audit_total", 0) + delta.double()
                return _original(self, delta)

            monkeypatch.setattr(cls, verb, spy)


PLACES = {"dedicated": {"center": "dedicated"}, "rank0": {"center": "rank0"},
          "sharded": {"center": "dedicated", "servers": 2}}


@pytest.mark.mpi(min_size=4)
@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("name", ALGOS)
def test_every_push_applied_exactly_once(audited, name, place):
    """Uneven speeds (worker w sleeps w ms a step), uneven lengths (10 + 3w steps),
    a rendezvous mid-way; the centre's counts and its change equal the workers' pushes
    (the centre on rank 0, on rank 0 training too, or in 2 slices on ranks 0 and 1)."""
    comm = MPI.COMM_WORLD
    algo, model, opt = build(name, comm, tau=2, **PLACES[place])
    meetings = []
    if not algo.is_worker:
        algo.serve(on_rendezvous=lambda: meetings.append(algo.consensus()))
    else:
        w = algo.worker_index
        for step in range(10 + 3 * w):
            opt.zero_grad()
            regression_loss(model, w, step).backward()
            time.sleep(0.001 * w)
            algo.step()
            if step == 4:
                algo.rendezvous()
                meetings.append(algo.consensus())
        algo.finish()
    final = algo.consensus()
    assert torch.equal(final, comm.bcast(final, root=0))
    assert len(meetings) == 1 and torch.equal(meetings[0], comm.bcast(meetings[0], root=0))
    mine = (algo.worker_index, algo.center.pushes,
            getattr(algo.center, "audit_total", torch.zeros(D, dtype=torch.float64))) \
        if algo.is_worker else None
    reports = [r for r in comm.gather(mine, root=0) or [] if r is not None]
    series = algo.series(2.0)            # collective
    if comm.rank == 0:
        counts = algo.server.counts
        assert len(reports) == algo.workers
        for w, pushes, _ in reports:
            assert pushes == (10 + 3 * w) // 2
            assert counts["push"][w] + counts["push_pull"][w] == pushes, w
        total = sum(t for _, _, t in reports)
        assert torch.allclose(final - x0(), total, rtol=1e-12, atol=1e-12)
        assert counts["done"] == [1] * algo.workers and counts["sync"] == [1] * algo.workers
        assert counts["pull"] == [(10 + 3 * w) // 2 for w in range(algo.workers)] \
            or name == "downpour"
        servers = PLACES[place].get("servers", 1)
        assert series["center/exchanges_per_s"] == \
            pytest.approx([sum(r[1] for r in reports) / 2.0] * servers)


def sequential(name, steps, tau, alpha, delta=0.99):
    """The paper's rules for one worker and its centre, written out element-wise."""
    x, c, v = x0(), x0(), torch.zeros(D, dtype=torch.float64)
    anchor = x.clone()

    def grad(at, k):
        A, b = regression_batch(0, k)
        return A.T @ (A @ at - b) / A.shape[0]

    ys = []
    for k in range(1, steps + 1):
        if name == "async-easgd":              # Algorithm 1: gradient at the pre-elastic x
            g = grad(x, k - 1)
            if k % tau == 0:
                e = alpha * (x - c)
                x, c = x - e, c + e
            x = x - ETA * g
            ys.append(x.clone())
        elif name == "eamsgd":                 # Algorithm 2: from the copy x, the elastic
            g = grad(x + delta * v, k - 1)     # and the look-ahead momentum steps
            if k % tau == 0:
                e = alpha * (x - c)
                x, c = x - e, c + e
            v = delta * v - ETA * g
            x = x + v
            ys.append(x + delta * v)
        else:                                  # DOWNPOUR: push the accumulated steps, pull
            x = x - ETA * grad(x, k - 1)
            if k % tau == 0:
                c = c + (x - anchor)
                x, anchor = c.clone(), c.clone()
            ys.append(x.clone())
    return ys, c


def pair_or_self(center, servers=1):
    """``servers`` centre ranks plus one worker (groups of COMM_WORLD), or rank 0 alone
    with the centre."""
    world, group = MPI.COMM_WORLD, servers + 1
    if center == "rank0":
        return MPI.COMM_SELF.Dup()
    full = world.size - world.size % group
    return world.Split(world.rank // group if world.rank < full else MPI.UNDEFINED)


@pytest.mark.mpi(min_size=3)
@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("name, tau", [("async-easgd", 1), ("async-easgd", 3), ("eamsgd", 1),
                                       ("eamsgd", 2), ("downpour", 3)])
def test_one_worker_equals_the_sequential_rule(name, tau, place):
    comm = pair_or_self(**PLACES[place])
    if comm == MPI.COMM_NULL:
        return
    steps, alpha = 7, 0.3
    options = {"alpha": alpha} if name != "downpour" else {}
    algo, model, opt = build(name, comm, tau=tau, **PLACES[place], **options)
    ys = centered_trace(algo, model, opt, steps)
    final = algo.consensus()
    comm.Free()
    want, centre = sequential(name, steps, tau, alpha)
    assert torch.allclose(final, centre, rtol=RTOL, atol=ATOL)
    for k, y in enumerate(ys):
        assert torch.allclose(y, want[k], rtol=RTOL, atol=ATOL), k


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("center", ["dedicated", "rank0"])
def test_eamsgd_without_momentum_is_async_easgd(center):
    """delta = 0: Algorithm 2 is Algorithm 1 (the same elastic and gradient steps)."""
    comm = pair_or_self(center)
    if comm == MPI.COMM_NULL:
        return
    finals = []
    for name, extra in (("async-easgd", {}), ("eamsgd", {"delta": 0.0})):
        algo, model, opt = build(name, comm, tau=2, center=center, alpha=0.3, **extra)
        if not algo.is_worker:
            algo.serve()
        else:
            for step in range(7):
                opt.zero_grad()
                regression_loss(model, 0, step).backward()
                algo.step()
            algo.finish()
        finals.append((algo.consensus(), algo.flat.data.clone()))
    comm.Free()
    assert torch.allclose(finals[0][0], finals[1][0], rtol=RTOL, atol=ATOL)
    assert torch.allclose(finals[0][1], finals[1][1], rtol=RTOL, atol=ATOL)


@pytest.mark.mpi(min_size=3)
@pytest.mark.parametrize("name", ["async-easgd", "eamsgd"])
def test_converges_on_a_quadratic_inside_the_stability_region(name):
    """f(x) = 0.5 ||x - 1||^2 with each worker's own gradient noise: the centre reaches 1.

    (With different optima per worker the centre would lean towards whichever
    worker pushed last: asynchrony on 2 cores makes that timing, not math.)"""
    comm = MPI.COMM_WORLD
    lr = 0.05 if name == "async-easgd" else 0.02      # eamsgd, delta 0.9: eta / (1 - delta) = 0.2
    algo, model, opt = build(name, comm, lr=lr, tau=4, **({"delta": 0.9} if name == "eamsgd" else {}))
    target = torch.ones(D, dtype=torch.float64)
    if not algo.is_worker:
        algo.serve()
    else:
        w = algo.worker_index
        g = torch.Generator().manual_seed(w)
        for step in range(600):
            opt.zero_grad()
            x = model.weight[0]
            noise = 0.1 * torch.randn(D, generator=g, dtype=torch.float64)
            (0.5 * ((x - 1) ** 2).sum() + (noise * x).sum()).backward()
            algo.step()
        algo.finish()
    start = (x0() - target).norm()
    assert (algo.consensus() - target).norm() < 0.05 * start


@pytest.mark.mpi(min_size=4)
@pytest.mark.parametrize("tau", [16, 64])
def test_easgd_stable_where_downpour_diverges(tau):
    """The paper's claim on f(x) = 0.5 ||x - 1||^2 with 3 workers and eta = 0.2.

    After tau local steps a worker has moved kappa = 1 - 0.8^tau (about all)
    of the way from its last pull to the optimum, and DOWNPOUR adds that
    whole move to the centre, which the other workers have moved meanwhile.
    Exchanges take turns (a token passed among the workers, so the order is
    the round robin of equal-speed workers rather than whatever a 2-core
    scheduler makes of 4 ranks), and the centre's error follows
    e_{n+1} = e_n - kappa e_{n-2}, whose characteristic roots have modulus
    1.14: it grows ~1.14 times per push. EASGD's elastic pull (alpha = 0.3,
    inside the stability region) contracts.
    """
    comm = MPI.COMM_WORLD.Split(0 if MPI.COMM_WORLD.rank < 4 else MPI.UNDEFINED)
    if comm == MPI.COMM_NULL:
        return
    rounds = 30
    target = torch.ones(D, dtype=torch.float64)
    errors = {}
    for name in ("async-easgd", "downpour"):
        algo, model, opt = build(name, comm, lr=0.2, tau=tau)
        workers = comm.Split(1 if algo.is_worker else MPI.UNDEFINED)
        if not algo.is_worker:
            algo.serve()
        else:
            w, p = workers.rank, workers.size
            for step in range(1, rounds * tau + 1):
                opt.zero_grad()
                (0.5 * ((model.weight[0] - 1) ** 2).sum()).backward()
                turn = step % tau == 0
                if turn and not (w == 0 and step == tau):
                    workers.recv(source=(w - 1) % p)
                algo.step()
                if turn and not (w == p - 1 and step == rounds * tau):
                    workers.send(None, dest=(w + 1) % p)
            algo.finish()
            workers.Free()
        errors[name] = ((algo.consensus() - target).norm() / (x0() - target).norm()).item()
    comm.Free()
    assert errors["async-easgd"] < 1e-3, errors           # converged
    assert not errors["downpour"] < 1e3, errors           # diverged (or overflowed to inf/nan)


@pytest.mark.mpi(min_size=2)
def test_bad_use_is_refused_before_any_message():
    with pytest.raises(ValueError, match="center dedicated needs at least 2 ranks"):
        build("async-easgd", MPI.COMM_SELF)
    model = regression_model(x0())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="own Nesterov momentum"):
        mpisgd.build("eamsgd", model, opt, comm=MPI.COMM_WORLD)
    algo, model, opt = build("async-easgd", MPI.COMM_WORLD)
    with pytest.raises(RuntimeError, match="rendezvous"):
        algo.consensus()                  # mid-run, no rendezvous: would hang; refused
    if algo.is_worker:
        with pytest.raises(RuntimeError, match="not a dedicated server"):
            algo.serve()
        algo.finish()
    else:
        with pytest.raises(RuntimeError, match="call serve"):
            algo.step()
        algo.serve()
    algo.consensus()
