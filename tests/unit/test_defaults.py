"""Per-algorithm defaults: each algorithm's default job must learn (docs/user-guide.md,
Defaults). A unit test on the resolved configuration; the measured errors are in the guide."""
import warnings

import pytest

from mpisgd import ALGORITHMS
from mpisgd.app.config import TrainConfig, default_momentum, from_sources

#: The server or the centre applies stale gradients or pushes: plain SGD, as in the papers
#: (Dutta et al. 2018; DOWNPOUR as the EASGD paper runs it). eamsgd's momentum is --delta.
PLAIN_SGD = {"async", "k-async", "k-batch-async", "downpour", "eamsgd"}


def resolved(**flags) -> TrainConfig:
    cfg = from_sources(None, flags)
    cfg.validate()
    return cfg


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_default_momentum_of_each_algorithm(algo):
    cfg = resolved(algo=algo)
    expected = 0.0 if algo in PLAIN_SGD else 0.9
    assert default_momentum(algo) == expected
    assert cfg.momentum == expected and cfg.resolved()["momentum"] == expected   # recorded


@pytest.mark.parametrize("algo", sorted(PLAIN_SGD - {"eamsgd"}))
def test_momentum_given_where_it_stalls_warns_with_the_fix(algo):
    fix = "use --momentum 0" + (", or damp stale gradients with --staleness-lr C,ETA_MAX"
                                if algo != "downpour" else "")
    with pytest.warns(UserWarning, match=rf"^--momentum 0.9 with --algo {algo}: .*{fix}$"):
        assert resolved(algo=algo, momentum=0.9).momentum == 0.9
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolved(algo=algo, momentum=0.0).momentum == 0.0


@pytest.mark.parametrize("algo", sorted(set(ALGORITHMS) - PLAIN_SGD))
def test_momentum_given_elsewhere_is_silent(algo):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolved(algo=algo, momentum=0.5).momentum == 0.5
        assert resolved(algo=algo, momentum=0.0).momentum == 0.0


def test_help_lists_the_exceptions():
    text = TrainConfig.HELP["momentum"]
    assert text.startswith("SGD momentum (default 0.9; 0 for ")
    assert all(algo in text for algo in PLAIN_SGD)
