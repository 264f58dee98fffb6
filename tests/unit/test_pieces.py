"""One-process tests of the building blocks: options, schedules, flat buffer, comm, oracle."""
import math

import pytest
import torch
from mpi4py import MPI

from mpisgd import algorithms, reference
from mpisgd.errors import OptionError
from mpisgd.comm import Comm
from mpisgd.flat import ParamBuffer
from mpisgd.schedule import Periodic, TimeVarying
from helpers import classifier


# ---- options ----------------------------------------------------------------

@pytest.mark.parametrize("name, options, message", [
    ("local", {"tau": 0}, "tau must be a positive integer, got 0"),
    ("local", {"tau": 2.5}, "tau must be an integer, got 2.5"),
    ("local", {"tau": "1e3"}, None),
    ("sync", {"overlap": 2}, "overlap must be true or false, got 2"),
    ("sync", {"overlap": [1]}, "overlap must be true or false"),
    ("local", {"schedule": "weekly"}, "schedule must be one of periodic, time-varying"),
    ("local", {"momentum_policy": "keep"}, "momentum_policy must be one of local, average, reset"),
    ("sync", {"tau": 4}, "tau does not apply to algorithm 'sync'"),
    ("sync", {"bucket_mb": -1}, "bucket_mb must be a positive number, got -1"),
    ("sync", {"overlap": "maybe"}, "overlap must be true or false"),
    ("bogus", {}, "unknown algorithm 'bogus'"),
])
def test_option_errors_name_the_option(name, options, message):
    if message is None:                     # accepted, as the general flags accept it
        assert algorithms.spec(name, **options).options["tau"] == 1000
        return
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")) as err:
        algorithms.spec(name, **options)
    if name != "bogus":                     # the option's name, not parsed from the text
        assert isinstance(err.value, OptionError) and err.value.name == next(iter(options))


def test_options_resolve_defaults_and_strings():
    assert algorithms.spec("local", tau="4").options["tau"] == 4
    assert algorithms.spec("sync", overlap="false").options["overlap"] is False
    assert algorithms.spec("sync").options["bucket_mb"] == 25.0


def test_build_raises_before_any_communication():
    model = classifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="tau must be a positive integer"):
        algorithms.build("local", model, opt, MPI.COMM_SELF, tau=0)


# ---- schedules --------------------------------------------------------------

def test_periodic():
    s = Periodic(4)
    assert [k for k in range(1, 13) if s.communicate(k)] == [4, 8, 12]
    with pytest.raises(ValueError, match="tau must be a positive integer, got 0"):
        Periodic(0)


def test_time_varying_lengths_and_rates():
    s = TimeVarying(4, 1 / 3, -2 / 3)
    assert [s.length(k) for k in range(1, 6)] == [math.ceil(4 * k ** (1 / 3)) for k in range(1, 6)]
    ends = [k for k in range(1, 40) if s.communicate(k)]
    assert ends[:4] == [4, 10, 16, 23]
    assert s.lr_scale(0) == 1.0 and s.lr_scale(4) == pytest.approx(2 ** (-2 / 3))
    assert s.period(4) == 6


# ---- flat buffer ------------------------------------------------------------

def test_param_buffer_views_and_order():
    model = classifier()
    before = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    flat = ParamBuffer(model)
    assert torch.equal(flat.data, before)
    flat.data.add_(1.0)                   # parameters are views: they move too
    assert torch.equal(torch.nn.utils.parameters_to_vector(model.parameters()), before + 1)
    for i, p in enumerate(flat.params):
        assert p.grad.data_ptr() == flat.grad_view(i).data_ptr()


def test_buckets_reverse_order_contiguous_cover():
    model = classifier()
    for mb, count in [(None, 1), (1e-12, 4), (1e12, 1)]:
        flat = ParamBuffer(model, None if mb is None else mb * 1e6)
        assert len(flat.buckets) == count
        spans = sorted((b.start, b.end) for b in flat.buckets)
        assert spans[0][0] == 0 and spans[-1][1] == flat.numel
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        assert flat.buckets[0].params[0] == len(flat.params) - 1   # last parameter first


def test_adopt_grad_after_set_to_none():
    model = classifier()
    flat = ParamBuffer(model)
    model.zero_grad(set_to_none=True)
    model(torch.randn(3, 4, dtype=torch.float64)).sum().backward()
    fresh = [p.grad.clone() for p in flat.params]
    for i in range(len(flat.params)):
        flat.adopt_grad(i)
        assert flat.params[i].grad.data_ptr() == flat.grad_view(i).data_ptr()
        assert torch.equal(flat.grad_view(i), fresh[i])


def test_mixed_dtypes_refused():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2).double())
    with pytest.raises(ValueError, match="one dtype"):
        ParamBuffer(model)


# ---- comm at size 1 ---------------------------------------------------------

def test_comm_uses_the_tensor_memory():
    t = torch.arange(6, dtype=torch.float32)
    mem, count, dtype = Comm.spec(t)
    assert mem.address == t.data_ptr() and count == 6 and dtype == MPI.FLOAT
    with pytest.raises(ValueError, match="contiguous"):
        Comm.spec(torch.zeros(4, 4).t())


@pytest.mark.parametrize("staging", ["never", "always"])
def test_comm_self_identity(staging):
    c = Comm(MPI.COMM_SELF, staging=staging)
    x = torch.arange(5, dtype=torch.float64)
    c.allreduce(x, average=True)
    assert torch.equal(x, torch.arange(5, dtype=torch.float64)) and c.bytes_sent == 0


def test_staging_env_validated(monkeypatch):
    monkeypatch.setenv("MPISGD_STAGING", "sometimes")
    with pytest.raises(ValueError, match="MPISGD_STAGING must be auto, always or never"):
        Comm(MPI.COMM_SELF)
    with pytest.raises(ValueError, match="staging must be auto, always or never, got 'x'"):
        Comm(MPI.COMM_SELF, staging="x")


def test_cuda_aware_override(monkeypatch):
    from mpisgd.mpienv import cuda_aware
    monkeypatch.setenv("MPISGD_CUDA_AWARE", "1")
    assert cuda_aware() is True
    monkeypatch.setenv("MPISGD_CUDA_AWARE", "0")
    assert cuda_aware() is False


@pytest.mark.parametrize("env, expected", [
    ({"MPI_LOCALNRANKS": "64"}, True), ({"OMPI_COMM_WORLD_LOCAL_SIZE": "1"}, False),
    ({"SLURM_STEP_TASKS_PER_NODE": "512(x2),4"}, True),
    ({"MPI_LOCALNRANKS": "64", "MPISGD_WAIT": "spin"}, False),
    ({"MPISGD_WAIT": "yield"}, True),
])
def test_waits_yield_only_when_oversubscribed(monkeypatch, env, expected):
    from mpisgd.mpienv import yield_when_waiting
    for var in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_STEP_TASKS_PER_NODE",
                "MPISGD_WAIT"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    assert yield_when_waiting() is expected


def test_wait_mode_validated(monkeypatch):
    from mpisgd.mpienv import yield_when_waiting
    monkeypatch.setenv("MPISGD_WAIT", "nap")
    with pytest.raises(ValueError, match="MPISGD_WAIT must be"):
        yield_when_waiting()


# ---- the oracle -------------------------------------------------------------

def test_oracle_averaging_without_gradients():
    m, d = 4, 3
    X0 = torch.arange(m, dtype=torch.float64).repeat(d, 1)       # x_i = ones * i
    zero = lambda k, X: torch.zeros_like(X)                      # noqa: E731
    X = reference.cooperative(X0, zero, 0.1, reference.averaging_matrix(m), 3, tau=3)
    assert torch.allclose(X, torch.full((d, m), (m - 1) / 2, dtype=torch.float64))
    X1 = reference.cooperative(X0, zero, 0.1, reference.averaging_matrix(m), 2, tau=3)
    assert torch.equal(X1, X0)                                    # no round yet


def test_elastic_matrix_spectrum():
    """W_alpha's spectrum is {1, 1 - alpha (m - 1 times), 1 - (m + 1) alpha} (REFERENCES.md);
    where zeta is smallest: test_elastic_pieces.py, on topology.best_elastic_alpha."""
    m = 4
    for alpha in (0.1, 2 / (m + 2), 0.3):
        W = reference.elastic_matrix(m, alpha)
        assert torch.allclose(W.sum(0), torch.ones(m + 1, dtype=torch.float64))
        eig = sorted(torch.linalg.eigvalsh(W).tolist())
        expected = sorted([1.0] + [1 - alpha] * (m - 1) + [1 - (m + 1) * alpha])
        assert eig == pytest.approx(expected, abs=1e-12)


def test_oracle_sgd_step_on_a_quadratic():
    """One worker, f(x) = x^2/2: x_k = (1 - eta)^k x_0."""
    X = reference.cooperative(torch.ones(1, 1, dtype=torch.float64), lambda k, X: X.clone(), 0.25,
                              torch.eye(1, dtype=torch.float64), 5)
    assert X.item() == pytest.approx(0.75 ** 5)
