"""mpisgd.spec: options resolved and validated once, purely; the registry generates the help."""
import subprocess
import sys

import pytest
import torch
from mpi4py import MPI

import mpisgd
from mpisgd import algorithms
from mpisgd.algorithms.options import TAU
from mpisgd.errors import OptionError


def test_spec_is_pure_and_frozen():
    code = ("import mpisgd, sys\n"
            "s = mpisgd.spec('gossip', topology='ring', tau=2)\n"
            "assert s.name == 'gossip' and s.options['tau'] == 2\n"
            "assert 'mpi4py.MPI' not in sys.modules or not sys.modules['mpi4py.MPI'].Is_initialized()\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr
    s = mpisgd.spec("local", tau=4)
    with pytest.raises(TypeError):
        s.options["tau"] = 5
    assert mpisgd.spec("local", tau=4) == s          # equal options, equal specs


@pytest.mark.parametrize("name, options, blamed", [
    ("local", {"tau": 0}, "tau"),
    ("local", {"schedule": "adacomm"}, "adacomm_interval"),
    ("async-easgd", {"center": "rank0", "servers": 2}, "servers"),
    ("async", {"staleness_lr": "1,0.1", "servers": 2}, "staleness_lr"),
    ("gossip", {"topology": "one-peer-exponential", "exchange": "neighbor"}, "exchange"),
    ("cooperative", {"topology": "easgd", "aux": 2}, "aux"),
    ("sync", {"straggler": "exp:-1"}, "straggler"),
    ("sync", {"comm_delay": "soon"}, "comm_delay"),
    ("sync", {"tau": 3}, "tau"),
])
def test_spec_errors_carry_the_option_name(name, options, blamed):
    with pytest.raises(OptionError) as err:
        mpisgd.spec(name, **options)
    assert err.value.name == blamed
    assert err.value.flagged().startswith("--" + blamed.replace("_", "-") + " ")


def test_bind_makes_the_algorithm_and_build_is_the_shortcut():
    model = torch.nn.Linear(3, 1).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    algo = mpisgd.spec("local", tau=3).bind(model, opt, comm=MPI.COMM_SELF)
    assert algo.name == "local" and algo.opts["tau"] == 3 and algo.period == 3
    assert not algo.rounds_based
    algo.close()
    other = mpisgd.build("local", model, opt, comm=MPI.COMM_SELF, tau=3)
    assert other.opts == algo.opts
    other.close()


def test_spec_refuses_options_with_a_spec():
    model = torch.nn.Linear(3, 1).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError):
        algorithms.LocalSGD(model, opt, MPI.COMM_SELF, spec=mpisgd.spec("local"), tau=2)


def test_each_option_declared_once():
    """Every declaration of a name is the same Option up to its default and choices."""
    seen = {}
    for cls in algorithms.ALGORITHMS.values():
        for opt in cls.declared():
            key = (opt.help, opt.kind)
            assert seen.setdefault(opt.name, key) == key, opt.name


def test_help_lists_every_algorithm_an_option_applies_to():
    text = algorithms.option_help("tau")
    listed = {a for algos in algorithms.applies_to("tau").values() for a in algos}
    for name, cls in algorithms.ALGORITHMS.items():
        assert (name in listed) == any(o.name == "tau" for o in cls.declared()), name
        assert name not in listed or name in text
    assert "local: default 8" in text and TAU.help in text
    assert "(all algorithms)" in algorithms.option_help("straggler")
    assert "sync: default True" in algorithms.option_help("overlap")
    assert "gossip, cooperative: default False" in algorithms.option_help("overlap")


def test_version_flag(capsys):
    from mpisgd.app import cli
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"mpisgd {mpisgd.__version__}"
