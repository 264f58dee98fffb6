"""Graphs, mixing weights, files, validation and time-varying topologies.

Expectations are closed forms: degrees by hand, circulant and hypercube
spectra, exact averaging of the one-peer exponential graph after log2 n
rounds, MATCHA's alpha for p = 1, and E[W], E[W^T W] by Monte Carlo.
"""
import math

import numpy as np
import pytest
import torch

from mpisgd import topology as T
from mpisgd.app import cli
from mpisgd.topology.varying import Matcha, OnePeerExponential, _matchings


def J(n):
    return torch.full((n, n), 1.0 / n, dtype=torch.float64)


def degrees(name, n, **kw):
    return T.graph(name, n, **kw).sum(1).tolist()


# ---------------------------------------------------------------- graphs

@pytest.mark.parametrize("name, n, want", [
    ("ring", 8, [2] * 8),
    ("ring", 2, [1, 1]),
    ("ring", 1, [0]),
    ("torus", 16, [4] * 16),           # 4 x 4
    ("torus", 12, [4] * 12),           # 3 x 4
    ("torus", 6, [3] * 6),             # 2 x 3: up and down are the same node
    ("torus", 4, [2] * 4),             # 2 x 2: a 4-cycle
    ("hypercube", 8, [3] * 8),
    ("hypercube", 16, [4] * 16),
    ("exponential", 8, [5] * 8),       # +-1, +-2, 4
    ("exponential", 12, [6] * 12),     # +-1, +-2, +-4 (8 = -4)
    ("complete", 6, [5] * 6),
    ("star", 6, [5, 1, 1, 1, 1, 1]),
])
def test_degrees(name, n, want):
    A = T.graph(name, n)
    assert A.dtype == torch.bool and torch.equal(A, A.T) and not A.diagonal().any()
    assert A.sum(1).tolist() == want


def test_torus_and_hypercube_edges():
    A = T.graph("torus", 12)            # 3 rows x 4 columns, node r*4 + c
    assert sorted(A[5].nonzero().flatten().tolist()) == [1, 4, 6, 9]
    assert sorted(A[0].nonzero().flatten().tolist()) == [1, 3, 4, 8]
    H = T.graph("hypercube", 8)
    assert sorted(H[5].nonzero().flatten().tolist()) == [1, 4, 7]


@pytest.mark.parametrize("name, n, needle", [
    ("torus", 7, "a 2-D torus needs n = rows x cols with rows, cols >= 2; n = 7 is prime: use ring"),
    ("hypercube", 6, "a hypercube needs n a power of 2, got n = 6"),
    ("mesh", 4, "unknown graph 'mesh': known are ring, torus, hypercube"),
    ("ring", 0, "n must be a positive number of nodes, got 0"),
])
def test_graph_errors(name, n, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        T.graph(name, n)


def test_p_only_for_erdos_renyi():
    with pytest.raises(ValueError, match="p is the edge probability of erdos-renyi; ring takes none"):
        T.graph("ring", 4, p=0.5)
    with pytest.raises(ValueError, match=r"p must be in \(0, 1\], got 0"):
        T.graph("erdos-renyi", 4, p=0)


def test_erdos_renyi_reproducible_connected():
    A = T.graph("erdos-renyi", 20, p=0.2, seed=3)
    assert torch.equal(A, T.graph("erdos-renyi", 20, p=0.2, seed=3))
    assert not torch.equal(A, T.graph("erdos-renyi", 20, p=0.2, seed=4))
    assert torch.equal(A, A.T) and not A.diagonal().any()
    T.validate(T.mixing_weights(A))                     # includes connectivity
    assert T.graph("erdos-renyi", 8).sum() > 0           # default p = 2 ln(8)/8
    with pytest.raises(ValueError, match="not connected in 100 draws .* use a larger p"):
        T.graph("erdos-renyi", 50, p=0.01)


# ---------------------------------------------------------------- weights

@pytest.mark.parametrize("name", T.GRAPHS)
def test_metropolis_is_symmetric_doubly_stochastic(name):
    n = 16 if name in ("hypercube", "torus") else 9
    W = T.mixing_weights(T.graph(name, n))
    T.validate(W, symmetric=True)


def test_metropolis_on_the_star():
    n = 6
    W = T.mixing_weights(T.graph("star", n))
    want = torch.eye(n, dtype=torch.float64) * (1 - 1 / n)
    want[0, :] = want[:, 0] = 1 / n                    # 1/(1 + max(n-1, 1))
    assert torch.allclose(W, want, atol=1e-15)


def test_uniform_on_the_ring_is_the_third_circulant():
    n = 7
    W = T.mixing_weights(T.graph("ring", n), "uniform")
    i = torch.arange(n)
    want = torch.zeros(n, n, dtype=torch.float64)
    for shift in (-1, 0, 1):
        want[i, (i + shift) % n] = 1 / 3
    assert torch.allclose(W, want, atol=1e-15)


def test_uniform_on_the_star_fails_naming_a_column():
    W = T.mixing_weights(T.graph("star", 5), "uniform")
    with pytest.raises(ValueError, match="column 0 of W sums to 2.2, not 1: W must be doubly "
                                         "stochastic .* use metropolis weights"):
        T.validate(W)


def test_unknown_weight_rule():
    with pytest.raises(ValueError, match="unknown weight rule 'max': known are metropolis, uniform"):
        T.mixing_weights(T.graph("ring", 4), "max")


@pytest.mark.parametrize("n", [3, 5, 8, 9])
def test_ring_zeta_closed_form(n):
    W = T.mixing_weights(T.graph("ring", n), "uniform")
    want = max(abs(1 / 3 + 2 / 3 * math.cos(2 * math.pi * k / n)) for k in range(1, n))
    assert T.zeta(W) == pytest.approx(want, abs=1e-12)


def test_complete_uniform_averages_in_one_round():
    W = T.mixing_weights(T.graph("complete", 7), "uniform")
    assert torch.allclose(W, J(7), atol=1e-15)
    assert T.zeta(W) == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("d", [2, 3, 4])
def test_hypercube_spectrum_closed_form(d):
    W = T.mixing_weights(T.graph("hypercube", 2 ** d))   # every weight 1/(d+1)
    want = sorted((1 - 2 * j / (d + 1) for j in range(d + 1) for _ in range(math.comb(d, j))),
                  reverse=True)
    assert torch.allclose(T.spectrum(W), torch.tensor(want, dtype=torch.float64), atol=1e-12)
    assert T.zeta(W) == pytest.approx((d - 1) / (d + 1), abs=1e-12)


def test_zeta_of_a_non_symmetric_matrix_is_the_spectral_norm():
    W = OnePeerExponential(8).matrix(0)        # (I + P)/2, P the shift by one
    assert T.zeta(W) == pytest.approx(math.cos(math.pi / 8), abs=1e-12)   # |1 + e^{2 pi i/8}|/2


# ---------------------------------------------------------------- validation

def ring(n=5):
    return T.mixing_weights(T.graph("ring", n))


def with_entry(W, i, j, value):
    W = W.clone()
    W[i, j] = value
    return W


@pytest.mark.parametrize("make, needle", [
    (lambda: torch.ones(2, 3) / 3, r"W must be square, got shape \(2, 3\)"),
    (lambda: with_entry(ring(), 2, 3, float("nan")), r"W\[2, 3\] is nan"),
    (lambda: with_entry(ring(), 2, 3, -0.1),
     r"W\[2, 3\] = -0.1 is negative: mixing weights must be non-negative"),
    (lambda: with_entry(ring(), 2, 2, 1 / 3 - 0.1), "row 2 of W sums to 0.9, not 1"),
    (lambda: torch.tensor([[0.5, 0.5, 0], [0.5, 0.5, 0], [0.4, 0.2, 0.4]], dtype=torch.float64),
     "column 0 of W sums to 1.4, not 1: W must be doubly stochastic so that gossip "
     "preserves the average$"),
    (lambda: OnePeerExponential(4).matrix(0), r"W is not symmetric: W\[0, 1\] = 0.5 but W\[1, 0\] = 0$"),
    (lambda: torch.block_diag(J(2), J(3)),
     "the graph of W is not connected: node 2 cannot be reached from node 0"),
])
def test_validation_errors(make, needle):
    with pytest.raises(ValueError, match=needle):
        T.validate(make())


def test_validate_names_the_matrix_and_can_skip_connectivity():
    W = OnePeerExponential(8).matrix(1)        # shift by 2: evens and odds apart
    with pytest.raises(ValueError, match="the graph of W_1 is not connected: node 1 cannot"):
        T.validate(W, symmetric=False, what="W_1")
    T.validate(W, symmetric=False, connected=False)


# ---------------------------------------------------------------- files

def test_load_npy_and_csv(tmp_path):
    W = ring(4)
    np.save(tmp_path / "w.npy", W.numpy())
    assert torch.equal(T.load(str(tmp_path / "w.npy"), 4), W)
    text = "# ring of 4, metropolis\n" + "\n".join(
        ", ".join(f"{x:.10f}" for x in row) if i % 2 else " ".join(f"{x:.10f}" for x in row)
        for i, row in enumerate(W.tolist())) + "  # last row\n\n"
    (tmp_path / "w.csv").write_text(text)
    loaded = T.load(str(tmp_path / "w.csv"), 4)
    assert torch.allclose(loaded, W, atol=1e-9)
    T.validate(loaded)
    (tmp_path / "six.csv").write_text("0.333333 0.333333 0.333333\n" * 3)   # rows sum to 0.999999
    T.validate(T.load(str(tmp_path / "six.csv"), 3))


def test_load_edge_lists(tmp_path):
    (tmp_path / "ring.txt").write_text("# a ring\n0 1\n1 2\n2,3\n\n3 0  # wrap\n")
    assert torch.equal(T.load(str(tmp_path / "ring.txt"), 4), ring(4))
    assert torch.allclose(T.load(str(tmp_path / "ring.txt"), 4, "uniform"), ring(4), atol=1e-15)
    (tmp_path / "w.edges").write_text("0 1 0.25\n1 2 0.25\n2 3 0.25\n3 0 0.25\n")
    W = T.load(str(tmp_path / "w.edges"), 4)
    want = torch.tensor([[.5, .25, 0, .25], [.25, .5, .25, 0], [0, .25, .5, .25], [.25, 0, .25, .5]],
                        dtype=torch.float64)
    assert torch.equal(W, want)


@pytest.mark.parametrize("name, text, needle", [
    ("a.txt", "0 1\n0 x\n", "a.txt line 2: cannot read 'x' as a node number"),
    ("a.txt", "0 1\n1 2 3 4\n", "a.txt line 2: expected 'i j' or 'i j w', got '1 2 3 4'"),
    ("a.txt", "0 1\n1 2 0.5\n", "a.txt line 2: 3 numbers, but line 1 has 2"),
    ("a.txt", "0 1\n# c\n3 4\n", r"a.txt line 3: node 4 is out of range for n = 4 "
                                 r"\(n is the number of workers/ranks: nodes are 0..3\)"),
    ("a.csv", "1, 0\n0\n", "a.csv line 2: 1 numbers, but line 1 has 2"),
    ("a.csv", "1 0 y\n", "a.csv line 1: cannot read 'y' as a number"),
])
def test_load_errors(tmp_path, name, text, needle):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=needle):
        T.load(str(tmp_path / name), 4)


def test_load_size_mismatch_and_missing_file(tmp_path):
    np.save(tmp_path / "w.npy", ring(5).numpy())
    with pytest.raises(ValueError, match="W in .*w.npy is 5x5 but there are 4 nodes"):
        T.load(str(tmp_path / "w.npy"), 4)
    (tmp_path / "w.csv").write_text("0.5 0.5 0\n0.5 0.5 0\n")
    with pytest.raises(ValueError, match="W in .*w.csv is 2x3 but there are 3 nodes"):
        T.load(str(tmp_path / "w.csv"), 3)
    with pytest.raises(ValueError, match="topology file .*nope.csv: no such file"):
        T.load(str(tmp_path / "nope.csv"), 4)


def test_build_from_a_file_validates_it(tmp_path):
    (tmp_path / "w.edges").write_text("0 1 0.75\n1 2 0.5\n")
    with pytest.raises(ValueError, match=r"w.edges: W\[1, 1\] = -0.25 is negative"):
        T.build(str(tmp_path / "w.edges"), 3)
    (tmp_path / "w.txt").write_text("0 1\n1 2\n")             # a path: degrees 1, 2, 1
    topo = T.build(str(tmp_path / "w.txt"), 3)
    assert not topo.time_varying and topo.period == 1 and topo.name.endswith("w.txt")
    with pytest.raises(ValueError, match="w.txt: column 0 of W sums to 0.833333, not 1: .* metropolis"):
        T.build(str(tmp_path / "w.txt"), 3, "uniform")


# ---------------------------------------------------------------- build

def test_build_static_and_errors():
    topo = T.build("hypercube", 8)
    assert isinstance(topo, T.Static) and topo.symmetric and topo.n == 8
    assert torch.equal(topo.matrix(5), T.mixing_weights(T.graph("hypercube", 8)))
    assert torch.equal(topo.support(), T.graph("hypercube", 8))
    assert topo.zeta == pytest.approx(0.5)
    easgd = T.build("easgd", 6)
    assert easgd.n == 7 and easgd.zeta == pytest.approx(0.85)
    with pytest.raises(ValueError, match="unknown topology 'mesh': known are ring, .*one-peer-exponential, "
                                         "easgd, or a path"):
        T.build("mesh", 4)
    with pytest.raises(ValueError, match="matcha applies to a graph"):
        T.build("one-peer-exponential", 4, matcha=0.5)
    with pytest.raises(ValueError, match="alpha is the EASGD moving rate"):
        T.build("ring", 4, alpha=0.1)
    assert set(T.TOPOLOGIES) == set(T.GRAPHS) | {"one-peer-exponential"}


# ---------------------------------------------------------------- one-peer exponential

@pytest.mark.parametrize("n", [2, 5, 8, 16])
def test_one_peer_exponential(n):
    topo = OnePeerExponential(n)
    assert topo.period == math.ceil(math.log2(n)) and topo.time_varying
    for k in range(2 * topo.period):
        W = topo.matrix(k)
        T.validate(W, symmetric=False, connected=False)
        off = (W != 0) & ~torch.eye(n, dtype=torch.bool)
        assert off.sum(1).tolist() == [1] * n and off.sum(0).tolist() == [1] * n
        assert torch.equal(W, topo.matrix(k % topo.period))
    T.validate(topo.expected(), symmetric=False)


@pytest.mark.parametrize("n", [8, 16])
def test_one_peer_exponential_averages_exactly_after_log2_n_rounds(n):
    topo = OnePeerExponential(n)
    P = torch.eye(n, dtype=torch.float64)
    for k in range(topo.period):
        P = topo.matrix(k) @ P
    assert torch.equal(P, J(n))


def test_one_peer_exponential_of_one_node():
    topo = OnePeerExponential(1)
    assert topo.period == 1 and torch.equal(topo.matrix(3), torch.ones(1, 1, dtype=torch.float64))


# ---------------------------------------------------------------- MATCHA

def test_matchings_cover_the_edges_once():
    A = T.graph("torus", 16)
    ms = _matchings(A)
    edges = [e for m in ms for e in m]
    assert sorted(edges) == sorted(map(tuple, A.triu(1).nonzero().tolist()))
    for m in ms:
        nodes = [v for e in m for v in e]
        assert len(nodes) == len(set(nodes))
    assert len(ms) <= 2 * 4 - 1


def test_matcha_rounds():
    base = T.graph("torus", 16)
    topo = Matcha(base, 0.5, seed=7)
    for k in (0, 1, 5, 123):
        W = topo.matrix(k)
        T.validate(W, symmetric=True, connected=False)
        assert torch.equal(W, topo.matrix(k))
        assert torch.equal(W, Matcha(base, 0.5, seed=7).matrix(k))
    assert any(not torch.equal(topo.matrix(k), Matcha(base, 0.5, seed=8).matrix(k)) for k in range(5))
    assert torch.equal(topo.support(), base)
    seen = torch.stack([topo.matrix(k) != 0 for k in range(200)]).any(0) & ~torch.eye(16, dtype=torch.bool)
    assert torch.equal(seen, base)
    T.validate(topo.expected())
    assert topo.zeta < 1 and topo.period is None


def test_matcha_expectations_by_monte_carlo():
    topo = Matcha(T.graph("ring", 8), 0.4, seed=1)
    Ws = torch.stack([topo.matrix(k) for k in range(4000)])
    assert torch.allclose(Ws.mean(0), topo.expected(), atol=0.02)
    p, a, L = topo.p, topo.alpha, topo.L
    second = torch.eye(8, dtype=torch.float64) - 2 * a * p * L + a * a * (p * p * L @ L + 2 * p * (1 - p) * L)
    assert torch.allclose((Ws.transpose(1, 2) @ Ws).mean(0), second, atol=0.02)
    assert topo.rho == pytest.approx(torch.linalg.matrix_norm(second - J(8), ord=2).item(), abs=1e-9)


def test_matcha_alpha_closed_form_for_p_one():
    topo = Matcha(T.graph("ring", 6), 1.0)       # Laplacian eigenvalues 0, 1, 1, 3, 3, 4
    assert topo.alpha == pytest.approx(2 / (1 + 4), abs=1e-9)
    assert topo.rho == pytest.approx((3 / 5) ** 2, abs=1e-9)
    assert torch.allclose(topo.matrix(0), topo.expected())


@pytest.mark.parametrize("name, n, p", [("torus", 16, 0.3), ("ring", 8, 0.7), ("hypercube", 8, 0.5),
                                         ("star", 6, 0.9), ("erdos-renyi", 10, 0.2)])
def test_matcha_alpha_is_the_grid_minimum(name, n, p):
    """The eigenvalue shortcut and ternary search against rho from the matrices on a grid."""
    topo = Matcha(T.graph(name, n), p)
    I, L, d_max = torch.eye(n, dtype=torch.float64), topo.L, int(T.graph(name, n).sum(1).max())
    second_moment = sum(p * Lj @ Lj for Lj in topo.laplacians) + sum(
        p * p * Lj @ Ll for j, Lj in enumerate(topo.laplacians)
        for l, Ll in enumerate(topo.laplacians) if j != l)
    grid = torch.linspace(0, 1 / d_max, 401, dtype=torch.float64)
    rhos = [torch.linalg.matrix_norm(I - 2 * a * p * L + a * a * second_moment - J(n), ord=2).item()
            for a in grid]
    best = min(range(len(grid)), key=rhos.__getitem__)
    assert topo.rho <= rhos[best] + 1e-9
    assert abs(topo.alpha - grid[best].item()) <= 1.5 / (400 * d_max)
    assert topo.alpha <= 1 / d_max
    for k in range(10):
        T.validate(topo.matrix(k), connected=False)       # non-negative even when all are active


def test_matcha_errors():
    with pytest.raises(ValueError, match=r"activation probability must be in \(0, 1\], got 1.5"):
        Matcha(T.graph("ring", 4), 1.5)
    with pytest.raises(ValueError, match="base graph of MATCHA is not connected: node 2 cannot be reached"):
        Matcha(torch.block_diag(torch.ones(2, 2), torch.ones(2, 2)).bool(), 0.5)


# ---------------------------------------------------------------- describe and the command

@pytest.mark.parametrize("spec, kw, needles", [
    ("ring", {}, ["ring, metropolis weights: n = 8 nodes, static", "eigenvalues: 1 (x1)", "zeta = 0.804738"]),
    ("star", {}, ["degree of node 0..7: 7 1 1 1 1 1 1 1", "self weights: min 0.125, max 0.875"]),
    ("one-peer-exponential", {}, ["time-varying, period 3", "mean 1 neighbours per node",
                                  "zeta of E[W] =", "mean per-round zeta over 3 rounds",
                                  "one period: zeta(W_2 ... W_0) = 0"]),
    ("torus", {"matcha": 0.5}, ["time-varying, random", "3 matchings active with probability p = 0.5 (seed 0)",
                                "alpha = 0.333333, ", "(alpha at its cap 1/d_max", "zeta of E[W] = ",
                                "mean per-round zeta over 20 rounds"]),
])
def test_describe(spec, kw, needles):
    text = T.describe(T.build(spec, 8, **kw))
    for needle in needles:
        assert needle in text, text


def test_topology_command(capfd, tmp_path):
    assert cli.main(["topology", "ring", "-n", "8"]) == 0
    want = max(abs(1 / 3 + 2 / 3 * math.cos(2 * math.pi * k / 8)) for k in range(1, 8))
    assert f"zeta = {want:.6g}," in capfd.readouterr().out
    assert cli.main(["topology", "torus", "-n", "7"]) == 2
    assert capfd.readouterr().err == ("mpisgd: error: a 2-D torus needs n = rows x cols with rows, "
                                      "cols >= 2; n = 7 is prime: use ring\n")
    (tmp_path / "w.txt").write_text("0 1\n1 2\n2 3\n")
    assert cli.main(["topology", str(tmp_path / "w.txt"), "-n", "4"]) == 0
    assert "zeta = " in capfd.readouterr().out
    assert cli.main(["topology", "hypercube", "--workers", "8", "--matcha", "0.5", "--seed", "3"]) == 0
    assert "matcha on hypercube" in capfd.readouterr().out
    assert cli.main(["topology", "easgd", "-m", "6", "--matcha", "0.5"]) == 2
    assert "--p and --matcha do not apply to easgd" in capfd.readouterr().err
