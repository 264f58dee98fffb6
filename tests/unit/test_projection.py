"""The projection's models against closed forms they must reproduce exactly (REFERENCES.md),
the alpha-beta fit, and the project command on real single-process records."""
import itertools

import numpy as np
import pytest
from mpi4py import MPI

from mpisgd.app import cli, record, train
from mpisgd.app.config import from_sources
from mpisgd.network import Network, fit
from mpisgd.projection import (Empirical, Exponential, Workload, fit_overhead, model_step,
                               project, simulate_server)


def H(n):
    return sum(1.0 / i for i in range(1, n + 1))


FREE = Network(0.0, 0.0)


@pytest.mark.parametrize("p", [2, 3, 8, 64, 1024])
def test_sync_is_the_compute_plus_the_ring_allreduce(p):
    net = Network(2e-6, 1e-9)
    n = 4e6
    w = Workload("sync", p, n, Empirical([0.01]), link_delay=0.003)
    got = model_step(w, p, net)
    ring = 2 * (p - 1) * 2e-6 + 2 * (p - 1) / p * n * 1e-9
    assert got["step"] == pytest.approx(0.01 + min(ring, net.allreduce_time(n, p, "tree")) + 0.003,
                                        rel=1e-12)
    assert net.allreduce_time(n, p, "ring") == pytest.approx(ring, rel=1e-12)
    assert got["bytes"] == pytest.approx(2 * (p - 1) / p * n)


TWO_LEVELS = Network(50e-6, 8e-9, levels={"intra": {"alpha": 2e-6, "beta": 1e-10},
                                          "inter": {"alpha": 50e-6, "beta": 8e-9}})


@pytest.mark.parametrize("m, G, R", [(2, 2, 2), (4, 8, 8), (16, 4, 8)])
def test_sync_in_groups_is_the_compute_plus_three_collectives_on_two_levels(m, G, R):
    """RS of n over G inside, AR of n/G over m across (R ranks on one link), AG inside."""
    n = 4e6
    w = Workload("sync", m, n, Empirical([0.01]), {"group_size": G}, group=G, ranks_per_node=R)
    inside = (G - 1) * 2e-6 + (G - 1) / G * n * 1e-10
    across = 2 * ((m - 1) * 50e-6 + (m - 1) / m * (n / G) * 8e-9 * R)
    got = model_step(w, m, TWO_LEVELS)
    assert got["step"] == pytest.approx(0.01 + 2 * inside + across, rel=1e-12)
    assert got["bytes"] == pytest.approx(2 * (G - 1) / G * n + 2 * (m - 1) / m * n / G)


def test_local_in_groups_pays_the_group_mean_every_step_and_the_blocks_every_tau():
    n, m, G, tau = 1e6, 4, 2, 8
    w = Workload("local", m, n, Empirical([0.02]), {"tau": tau, "group_size": G}, group=G,
                 ranks_per_node=G)
    inside = (G - 1) * 2e-6 + (G - 1) / G * n * 1e-10
    across = 2 * ((m - 1) * 50e-6 + (m - 1) / m * (n / G) * 8e-9 * G)
    got = model_step(w, m, TWO_LEVELS)
    assert got["step"] == pytest.approx((tau * 0.02 + tau * 2 * inside + across + inside) / tau,
                                        rel=1e-9)
    with pytest.raises(ValueError, match="no two-level model for --algo gossip"):
        model_step(Workload("gossip", m, n, Empirical([0.02]), group=G), m, TWO_LEVELS)


@pytest.mark.parametrize("tau, every, averages", [(8, 4, 2), (8, 3, 10 / 3), (8, 8, 1),
                                                   (4, 8, 1), (6, 4, 2)])
def test_hierarchical_local_pays_the_group_average_every_group_tau_steps(tau, every, averages):
    """Inside every ``every`` steps and before each round that is not on such a step:
    (8, 3) over 24 steps averages at 3, 6, ..., 21 and before the rounds at 8, 16, 24."""
    n, m, G = 1e6, 4, 2
    w = Workload("local", m, n, Empirical([0.02]),
                 {"tau": tau, "group_size": G, "group_tau": every}, group=G, ranks_per_node=G)
    inside = (G - 1) * 2e-6 + (G - 1) / G * n * 1e-10
    across = 2 * ((m - 1) * 50e-6 + (m - 1) / m * (n / G) * 8e-9 * G)
    got = model_step(w, m, TWO_LEVELS)
    assert got["step"] == pytest.approx(
        (tau * 0.02 + averages * 2 * inside + across + inside) / tau, rel=1e-9)
    assert got["bytes"] == pytest.approx(
        (averages * 2 * (G - 1) / G * n + 2 * (m - 1) / m * n / G + (G - 1) / G * n) / tau)


def test_fewer_meetings_inside_a_group_wait_less_for_its_slowest_rank():
    """Random compute: a group that meets every step waits for its slowest rank every step
    (sum of maxima); meeting every tau steps, once per round (maximum of sums)."""
    n, m, G, tau = 0.0, 2, 4, 8
    steps = {}
    for every in (1, 2, 8):
        w = Workload("local", m, n, Exponential(0.01),
                     {"tau": tau, "group_size": G, "group_tau": every}, group=G,
                     ranks_per_node=G)
        steps[every] = model_step(w, m, FREE)["compute"]
    assert steps[1] > steps[2] > steps[8]
    assert steps[1] >= 0.97 * 0.01 * H(G)      # at least E[max_G C] a step (Monte Carlo)
    assert steps[8] >= 0.97 * 0.01             # at least the mean step


@pytest.mark.parametrize("p, k", [(3, 1), (3, 2), (8, 1), (8, 5), (256, 16), (1024, 1024)])
def test_k_sync_with_exponential_compute_is_the_order_statistic(p, k):
    mu = 0.05
    w = Workload("k-sync", p, 0.0, Exponential(mu), {"k": k})
    assert model_step(w, p, FREE)["update"] == pytest.approx(mu * (H(p) - H(p - k)), rel=1e-12)
    ps = Workload("ps-sync", p, 0.0, Exponential(mu))
    assert model_step(ps, p, FREE)["step"] == pytest.approx(mu * H(p), rel=1e-12)


def test_empirical_order_statistics_are_exact():
    x = np.array([0.5, 1.0, 4.0])
    e = Empirical(x)
    for p in (1, 2, 3):
        draws = list(itertools.product(x, repeat=p))
        for k in range(1, p + 1):
            assert e.order(k, p) == pytest.approx(np.mean([sorted(d)[k - 1] for d in draws]),
                                                  rel=1e-12)


@pytest.mark.parametrize("algo, k, closed", [
    ("async", 1, lambda mu, p, k: mu / p),
    ("k-batch-async", 2, lambda mu, p, k: k * mu / p),
    ("k-batch-sync", 2, lambda mu, p, k: k * mu / p),
    ("k-async", 2, lambda mu, p, k: mu * (H(p) - H(p - k))),
])
def test_the_simulated_protocols_meet_their_closed_forms(algo, k, closed):
    mu, p = 0.05, 8
    got = simulate_server(Exponential(mu), p, k, algo, 0.0, 0.0, updates=20000,
                          rng=np.random.default_rng(3))["update"]
    assert got == pytest.approx(closed(mu, p, k), rel=0.03)       # 20000 updates: ~1% noise


def test_local_sgd_with_tau_one_is_sync_and_longer_periods_amortise():
    e = Empirical(np.random.default_rng(0).exponential(0.01, 500))
    net = Network(1e-5, 1e-9)
    sync = model_step(Workload("sync", 8, 1e6, e), 8, net)["step"]
    assert model_step(Workload("local", 8, 1e6, e, {"tau": 1}), 8, net)["step"] == sync
    assert model_step(Workload("local", 8, 1e6, e, {"tau": 8}), 8, net)["step"] < sync


def test_gossip_waits_for_its_neighbourhood_not_for_everyone():
    e = Empirical(np.random.default_rng(0).exponential(0.01, 500))
    ring = model_step(Workload("gossip", 64, 0.0, e, {"topology": "ring"}), 64, FREE)["step"]
    sync = model_step(Workload("sync", 64, 0.0, e), 64, FREE)["step"]
    assert e.mean < ring < sync


def test_the_alpha_beta_fit_recovers_its_line():
    sizes = np.array([8, 512, 32768, 2 ** 21, 2 ** 24])
    assert fit(sizes, 3e-6 + sizes * 2e-10) == pytest.approx((3e-6, 2e-10), rel=1e-9)


def test_networks_parse_from_a_pair_or_a_file(tmp_path):
    assert Network.parse("1e-6,2e-10").beta == 2e-10
    path = str(tmp_path / "n.json")
    Network(1e-6, 2e-10, "here", {"alpha": 3e-6, "beta": 4e-10}).save(path)
    back = Network.parse(path)
    assert back.allreduce["alpha"] == 3e-6 and back.source == "here"
    for bad, needle in (("x,y", "must be a calibration file or ALPHA,BETA"),
                        ("-1,0", "must be non-negative"), ("/no/n.json", "no such file")):
        with pytest.raises(ValueError, match=needle):
            Network.parse(bad)


def test_the_overhead_is_what_the_model_leaves_out():
    w = Workload("sync", 4, 0.0, Empirical([0.01]), measured=0.013)
    assert fit_overhead([w], FREE).step == pytest.approx(0.003)
    assert project(w, [4], FREE, fit_overhead([w], FREE))[0]["step"] == pytest.approx(0.013)


def test_a_server_overhead_is_per_message_and_grows_with_the_workers():
    mu, o = 0.02, 0.001
    truth = Workload("k-sync", 3, 0.0, Exponential(mu), {"k": 1})
    truth.measured = model_step(truth, 3, FREE, message=o)["step"]
    fitted = fit_overhead([truth], FREE)
    assert fitted.step == 0 and fitted.message == pytest.approx(o, rel=1e-6)
    at = {p: project(truth, [p], FREE, fitted)[0]["update"] for p in (3, 15)}
    for p in (3, 15):                    # K-sync: (K + P) messages per update
        assert at[p] == pytest.approx(mu * (H(p) - H(p - 1)) + (1 + p) * o, rel=1e-6)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    d = tmp_path_factory.mktemp("proj")
    for seed in (0, 1):
        cfg = from_sources(None, dict(steps=30, log_every=10, out=str(d / f"s{seed}.h5"),
                                      threads=1, seed=seed, straggler="exp:0.002"))
        train.run(cfg, MPI.COMM_SELF, quiet=True)
    return d


def test_project_prints_a_row_per_worker_count(records, tmp_path, capsys):
    png = str(tmp_path / "p.png")
    assert cli.main(["project", str(records), "--workers", "1,16,1024", "--network",
                     "1e-5,1e-9", "--out", png]) == 0
    text = capsys.readouterr().out
    assert "sync: fitted on 1 workers (2 records)" in text
    rows = [line.split() for line in text.splitlines() if line.strip().split()[:1] in (["1"], ["16"], ["1024"])]
    assert [r[0] for r in rows] == ["1", "16", "1024"]
    steps = [float(r[1]) for r in rows]
    assert steps[0] < steps[1] < steps[2]                # stragglers and the Allreduce grow
    assert open(png, "rb").read(4) == b"\x89PNG"
    rec = record.read(str(records / "s0.h5"))
    assert rec["attrs"]["train_samples"] > 0


@pytest.mark.parametrize("args, needle", [
    (["--workers", "0"], "--workers must be positive integers"),
    (["--workers", "4", "--network", "fast"], "--network fast: no such file (give mpisgd calibrate"),
    (["--workers", "4", "--network", "1,x"], "--network must be a calibration file or ALPHA,BETA"),
])
def test_project_names_bad_input(records, capfd, args, needle):
    argv = ["project", str(records), *args]
    if "--network" not in args:
        argv += ["--network", "0,0"]
    assert cli.main(argv) == 2
    assert needle in capfd.readouterr().err
