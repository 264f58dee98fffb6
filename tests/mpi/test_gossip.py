"""gossip (D-PSGD) and cooperative A(tau, W, v): against W^k, the dense oracle, and special cases.

Row convention (mpisgd.topology): a round is x_i <- sum_j W[i, j] x_j, so
the oracle (X <- X M, columns = workers) gets M = W^T. The expected W are
written out from their definitions in expected_w.py (Metropolis and uniform
weights, W_alpha, the one-peer exponential graph, MATCHA's rounds), never
taken from ``topology.build``, the code under test. float64 throughout; the
tolerance covers summation order only.
"""
import os
import tempfile

import numpy as np
import pytest
import torch
from mpi4py import MPI

import mpisgd
from mpisgd import reference, topology
from mpisgd.comm import Comm
from mpisgd.errors import ConfigError
from mpisgd.mixing import Mixer
import expected_w
from helpers import D, classifier_trace, regression_grad, regression_model, regression_run

ETA = 0.05
TOL = dict(rtol=1e-12, atol=1e-13)
WORLD = MPI.COMM_WORLD

#: (spec, build options, exchanges to try) for the no-gradient W^k test; 4 ranks or more
GRAPHS = [
    ("ring", {}, ("neighbor", "persistent")),
    ("torus", {}, ("neighbor",)),
    ("exponential", {}, ("neighbor", "persistent")),
    ("star", {}, ("neighbor",)),
    ("complete", {}, ("allreduce", "neighbor")),
    ("erdos-renyi", {"p": 0.6, "seed": 3}, ("neighbor",)),
    ("one-peer-exponential", {}, ("persistent",)),
    ("ring", {"matcha": 0.5, "seed": 5}, ("persistent",)),
    ("torus", {"weights": "uniform"}, ("neighbor",)),
]


def x0():
    return torch.linspace(-1.0, 1.0, D, dtype=torch.float64)


def stacked_product(W, rounds, X):
    """W_{k-1} ... W_0 X: the rows of X after ``rounds`` gossip rounds (W: k -> W_k)."""
    for k in range(rounds):
        X = W(k) @ X
    return X


@pytest.mark.mpi(min_size=4)
@pytest.mark.parametrize("spec, build, exchange",
                         [(s, b, e) for s, b, es in GRAPHS for e in es])
@pytest.mark.parametrize("snapshot", [False, True])
def test_k_rounds_equal_W_power_and_keep_the_average(comm, spec, build, exchange, snapshot):
    size, rank = comm.size, comm.rank
    T = topology.build(spec, size, **build)
    d = 5
    X = torch.arange(size, dtype=torch.float64)[:, None] + 0.1 * torch.arange(d, dtype=torch.float64)
    x = X[rank].clone()                  # x_i = ones * rank, plus a ramp
    mixer = Mixer(Comm(comm), T, x, exchange, snapshot=snapshot)
    assert mixer.exchange.name == exchange
    for k in range(6):
        mixer.mix(k)
    W = expected_w.rounds(spec, size, alpha=getattr(T, "alpha", None), **build)
    assert torch.allclose(x, stacked_product(W, 6, X)[rank], **TOL)
    mean = x.clone()
    comm.Allreduce(MPI.IN_PLACE, mean.numpy())
    assert torch.allclose(mean / size, X.mean(0), **TOL)


def run(name, steps, comm=WORLD, **options):
    """Train the regression problem; the trace of this worker's parameters after each step."""
    return regression_run(name, x0(), steps, comm, ETA, **options)


def oracle(rounds, steps, tau=1, overlap=False, v=0):
    """reference.cooperative on the same gradient stream, W_k = ``rounds(k)`` (expected_w)."""
    if overlap:      # the round called at step s = k1 - 1 is applied in step k1
        def communicate(k1):
            return k1 > 1 and (k1 - 1) % tau == 0

        def W(k):          # (called at k = 0 too, for the size)
            return rounds(max(k // tau - 1, 0)).T
    else:
        def communicate(k1):
            return k1 % tau == 0

        def W(k):
            return rounds(max((k + 1) // tau - 1, 0)).T
    return reference.cooperative(x0(), regression_grad, ETA, W, steps, communicate=communicate,
                                 v=v, trace=True, simultaneous=overlap)[1]


CASES = [
    ("ring", {}, 1),
    ("torus", {}, 2),
    ("exponential", {}, 1),
    ("erdos-renyi", {"graph_p": 0.5, "topology_seed": 7}, 1),
    ("one-peer-exponential", {}, 1),
    ("ring", {"matcha": 0.6, "topology_seed": 2}, 3),
    ("ring", {"weights": "uniform"}, 2),
]


@pytest.mark.mpi(min_size=4)
@pytest.mark.parametrize("spec, options, tau", CASES)
@pytest.mark.parametrize("overlap", [False, True])
def test_gossip_equals_the_oracle(comm, spec, options, tau, overlap):
    steps = 4 * tau + 1
    algo, trace = run("gossip", steps, comm, topology=spec, tau=tau, overlap=overlap, **options)
    rounds = expected_w.rounds(spec, comm.size, options.get("graph_p"), options.get("matcha"),
                             options.get("topology_seed", 0), getattr(algo.topology, "alpha", None),
                             options.get("weights", "metropolis"))
    expected = oracle(rounds, steps, tau, overlap)
    for k in range(steps):
        assert torch.allclose(trace[k], expected[k][:, comm.rank], **TOL), k
    assert algo.rounds == steps // tau
    assert torch.allclose(algo.consensus(), expected[-1].mean(1), **TOL)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("tau", [1, 3])
@pytest.mark.parametrize("overlap", [False, True])
def test_cooperative_easgd_matrix_with_one_auxiliary_variable(comm, tau, overlap):
    """A(tau, W_alpha, 1): the centre replicated on every worker."""
    steps = 3 * tau + 2
    algo, trace = run("cooperative", steps, comm, topology="easgd", alpha=0.2, tau=tau,
                      overlap=overlap)
    W = expected_w.w_alpha(comm.size, 0.2)
    expected = oracle(lambda k: W, steps, tau, overlap, v=1)
    for k in range(steps):
        assert torch.allclose(trace[k], expected[k][:, comm.rank], **TOL), k
    assert torch.allclose(algo.aux[0], expected[-1][:, -1], **TOL)
    assert torch.allclose(algo.consensus(), expected[-1].mean(1), **TOL)   # u: all m + v columns


@pytest.mark.mpi(min_size=2)
def test_cooperative_with_a_user_matrix_of_two_auxiliary_variables(comm):
    """Any symmetric doubly stochastic W over m workers + v = 2: from a .npy file."""
    m = comm.size
    n = m + 2
    rng = np.random.default_rng(0)
    W = np.zeros((n, n))
    for _ in range(3):                   # a symmetric doubly stochastic mix of permutations
        P = np.eye(n)[rng.permutation(n)]
        W += (P + P.T) / 6
    # comm's rank 0 writes the file (on COMM_SELF every rank its own): a tempfile, not
    # tmp_path_factory, whose cleanup of old base directories races between the processes
    # when several create one at once.
    with tempfile.TemporaryDirectory() as tmp:
        path = None
        if comm.rank == 0:
            path = os.path.join(tmp, "W.npy")
            np.save(path, W)
        path = comm.bcast(path)          # written before anyone loads it
        algo, trace = run("cooperative", 7, comm, topology=path, aux=2, tau=2)
        comm.Barrier()                   # loaded everywhere before rank 0 removes it
    expected = oracle(lambda k: torch.from_numpy(W), 7, 2, v=2)
    for k in range(7):
        assert torch.allclose(trace[k], expected[k][:, comm.rank], **TOL), k
    assert torch.allclose(algo.aux, expected[-1][:, m:].T, **TOL)


# ---- special cases -------------------------------------------------------------


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("exchange", ["allreduce", "neighbor"])
def test_cooperative_complete_tau_one_is_sync(comm, exchange):
    coop, _ = classifier_trace("cooperative", comm, topology="complete", tau=1, exchange=exchange)
    sync, _ = classifier_trace("sync", comm)
    for a, b in zip(coop, sync):
        assert torch.allclose(a, b, **TOL)


@pytest.mark.mpi(min_size=2)
def test_cooperative_complete_is_local_sgd(comm):
    coop, _ = classifier_trace("cooperative", comm, topology="complete", tau=3, momentum=0.9)
    local, _ = classifier_trace("local", comm, tau=3, momentum=0.9)
    for a, b in zip(coop, local[:-1]):
        assert torch.allclose(a, b, **TOL)


@pytest.mark.mpi(min_size=4)
def test_gossip_is_cooperative_without_auxiliary_variables(comm):
    """D-PSGD = A(1, W, 0): gossip and cooperative on the same ring."""
    gossip, _ = classifier_trace("gossip", comm, topology="ring")
    coop, _ = classifier_trace("cooperative", comm, topology="ring")
    for a, b in zip(gossip, coop):
        assert torch.equal(a, b)


@pytest.mark.mpi(min_size=2)
def test_cooperative_easgd_overlapped_is_easgd(comm):
    """EASGD (the 2015 paper's simultaneous order) = A(1, W_alpha, 1) with the overlapped round."""
    coop, algo = classifier_trace("cooperative", comm, topology="easgd", alpha=0.15, overlap=True)
    easgd, easgd_algo = classifier_trace("easgd", comm, alpha=0.15)
    for a, b in zip(coop[:-1], easgd[:-1]):
        assert torch.allclose(a, b, **TOL)


# ---- telemetry ------------------------------------------------------------------

@pytest.mark.mpi(min_size=4)
def test_consensus_distance_and_bytes_per_round(comm):
    if comm.size == 1:
        pytest.skip("one rank: a ring without neighbours sends nothing and has distance 0")
    algo, _ = run("gossip", 3, comm, topology="ring", exchange="neighbor")
    mean = algo.consensus()
    every = comm.allgather(algo.flat.data.numpy().copy())
    expected = np.mean([np.sum((row - mean.numpy()) ** 2) for row in every])
    assert algo.consensus_distance() == pytest.approx(expected, rel=1e-12)
    per_round = 2 * D * 8                # two neighbours, float64
    assert algo.mixer.bytes_per_round == per_round
    start = (comm.size - 1) / comm.size * D * 8     # the initial broadcast
    assert algo.stats()["bytes_sent"] == pytest.approx(start + 3 * per_round)


# ---- bad W -------------------------------------------------------------------------

def write_on_rank0(tmp_path_factory, name, text):
    path = None
    if WORLD.rank == 0:
        path = str(tmp_path_factory.mktemp("bad") / name)
        with open(path, "w") as f:
            f.write(text)
    return WORLD.bcast(path)


def matrix_text(W):
    return "\n".join(",".join(f"{v:.6f}" for v in row) for row in W)


@pytest.mark.mpi(min_size=4)
@pytest.mark.parametrize("kind", ["column", "negative", "disconnected", "size"])
def test_bad_user_matrix_is_named_on_every_rank(tmp_path_factory, kind):
    m = WORLD.size
    W = np.eye(m)
    if kind == "column":
        W = np.full((m, m), 1.0 / m)
        W[0], W[1] = [1.0] + [0.0] * (m - 1), [1.0] + [0.0] * (m - 1)   # rows sum to 1, column 0 too much
        match = "column 0"
    elif kind == "negative":
        W = np.full((m, m), 1.0 / m)
        W[2, 3], W[2, 2] = -0.1, 1.0 / m + 0.1 + 1.0 / m
        W[2, 1] = 0.0
        match = r"W\[2, 3\]"
    elif kind == "disconnected":
        W = np.eye(m)
        W[:2, :2] = 0.5                  # nodes 0 and 1 talk; 2.. alone
        match = "not connected"
    else:
        W = np.full((m + 1, m + 1), 1.0 / (m + 1))
        match = "5x5|nodes"
    path = write_on_rank0(tmp_path_factory, "W.csv", matrix_text(W))
    model = regression_model(x0())
    with pytest.raises(ValueError, match=match):
        mpisgd.build("gossip", model, torch.optim.SGD(model.parameters(), lr=0.1),
                     comm=WORLD, topology=path)


@pytest.mark.mpi(min_size=3)
def test_cooperative_refuses_a_directed_topology():
    model = regression_model(x0())
    with pytest.raises(ValueError, match="not symmetric"):
        mpisgd.build("cooperative", model, torch.optim.SGD(model.parameters(), lr=0.1),
                     comm=WORLD, topology="one-peer-exponential")


@pytest.mark.mpi(min_size=2)
def test_a_file_missing_on_one_rank_ends_every_rank(tmp_path_factory):
    path = write_on_rank0(tmp_path_factory, "ring.txt",
                          "\n".join(f"{i} {(i + 1) % WORLD.size}" for i in range(WORLD.size)))
    if WORLD.rank == 1:
        path += ".elsewhere"
    model = regression_model(x0())
    with pytest.raises(ConfigError, match="no such file"):
        mpisgd.build("gossip", model, torch.optim.SGD(model.parameters(), lr=0.1),
                     comm=WORLD, topology=path)


@pytest.mark.mpi(min_size=2)
def test_different_matrices_on_different_ranks_are_refused(tmp_path_factory):
    m = WORLD.size
    path = None
    if WORLD.rank == 0:
        base = tmp_path_factory.mktemp("differ")
        np.save(base / "J.npy", np.full((m, m), 1.0 / m))
        np.save(base / "I.npy", 0.5 * np.eye(m) + 0.5 * np.roll(np.eye(m), 1, 1))
        path = str(base)
    path = WORLD.bcast(path)
    mine = f"{path}/{'J' if WORLD.rank == 0 else 'I'}.npy"
    model = regression_model(x0())
    with pytest.raises(ConfigError, match="disagree"):
        mpisgd.build("gossip", model, torch.optim.SGD(model.parameters(), lr=0.1),
                     comm=WORLD, topology=mine)


@pytest.mark.mpi(min_size=3)
@pytest.mark.parametrize("options, match", [
    ({"topology": "ring", "exchange": "allreduce"}, "11\\^T/m"),
    ({"topology": "one-peer-exponential", "exchange": "neighbor"}, "static W"),
    ({"topology": "easgd"}, "auxiliary"),
    ({"topology": "no-such-graph"}, "unknown topology"),
])
def test_bad_gossip_options(options, match):
    model = regression_model(x0())
    with pytest.raises(ValueError, match=match):
        mpisgd.build("gossip", model, torch.optim.SGD(model.parameters(), lr=0.1),
                     comm=WORLD, **options)


@pytest.mark.mpi(min_size=2)
def test_close_frees_the_graph_communicator_and_requests():
    algo, _ = run("gossip", 2, topology="one-peer-exponential", overlap=True)
    algo.close()                          # applies the round in flight first
    assert algo.mixer.graph == MPI.COMM_NULL and algo.mixer.exchange.requests is None
    assert algo._pending is None


@pytest.mark.mpi(min_size=1)
def test_single_rank_allreduce_exchange_is_accepted():
    algo, trace = run("cooperative", 3, comm=MPI.COMM_SELF, topology="complete", exchange="allreduce")
    assert algo.mixer.exchange.name == "allreduce"
    algo.close()
