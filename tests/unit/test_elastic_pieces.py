"""EASGD's pure pieces: W_alpha's spectrum and zeta, the moving rate, the stability warning."""
import pytest
import torch

from mpisgd import topology
from mpisgd.app import cli
from mpisgd.algorithms.easgd import moving_rate, stability_warning
from mpisgd.reference import elastic_matrix


@pytest.mark.parametrize("m", [2, 4, 8, 31])
def test_zeta_is_smallest_at_two_over_m_plus_two(m):
    alpha, z = topology.best_elastic_alpha(m)
    assert alpha == pytest.approx(2 / (m + 2), abs=1e-9)
    assert z == pytest.approx(m / (m + 2), abs=1e-9)


@pytest.mark.parametrize("m, alpha", [(3, 0.1), (5, 0.3)])
def test_elastic_spectrum_is_the_closed_form(m, alpha):
    want = sorted([1.0] + [1 - alpha] * (m - 1) + [1 - (m + 1) * alpha], reverse=True)
    assert torch.allclose(topology.spectrum(elastic_matrix(m, alpha)),
                          torch.tensor(want, dtype=torch.float64), atol=1e-12)
    assert topology.zeta(elastic_matrix(m, alpha)) == pytest.approx(
        max(abs(1 - alpha), abs(1 - (m + 1) * alpha)))


def test_topology_easgd_command(capfd):
    assert cli.main(["topology", "easgd", "-m", "6"]) == 0
    out = capfd.readouterr().out
    assert "alpha = 0.15 (beta 0.9 / m" in out
    assert "eigenvalues: 1 (x1), 0.85 (x5), -0.05 (x1)" in out
    assert "zeta = 0.85" in out
    assert "alpha minimising zeta: 0.250000 (2/(m+2) = 0.250000), zeta = 0.750000" in out
    assert cli.main(["topology", "easgd", "-m", "0"]) == 2
    assert "-m must be a positive number of workers" in capfd.readouterr().err


def test_moving_rate_defaults_to_beta_over_workers():
    assert moving_rate({"alpha": None, "beta": 0.9}, 4) == pytest.approx(0.225)
    assert moving_rate({"alpha": 0.1, "beta": 0.9}, 4) == 0.1


@pytest.mark.parametrize("eta, alpha, workers, sync, warns", [
    (0.1, 0.225, 4, True, None),
    (1.0, 2 / 3, 1, False, None),             # on the boundary: (4 - 2)/(4 - 1)
    (1.0, 0.7, 1, False, "stability region"),
    (2.5, 0.1, 4, True, "stability region"),
    (0.1, 0.45, 4, True, "overshoots"),       # 0.45 >= 2/5
    (0.1, 0.45, 4, False, None),              # asynchronous: one worker per update
])
def test_stability_warning(eta, alpha, workers, sync, warns):
    message = stability_warning(eta, alpha, workers, sync)
    if warns is None:
        assert message is None
    else:
        assert warns in message


def test_eamsgd_refuses_a_momentum_flag_and_records_zero():
    from mpisgd.app.config import from_sources
    from mpisgd.errors import ConfigError
    with pytest.raises(ConfigError, match="--momentum does not apply to --algo eamsgd"):
        from_sources(None, {"algo": "eamsgd", "momentum": 0.5})
    with pytest.raises(ConfigError, match="--nesterov does not apply"):
        from_sources(None, {"algo": "eamsgd", "nesterov": True})
    cfg = from_sources(None, {"algo": "eamsgd"})
    cfg.validate()
    assert cfg.momentum == 0.0 and cfg.nesterov is False
