"""Delay injection: spec parsing, determinism, distribution means, recording, wait()."""
import math
import re
import time

import numpy as np
import pytest

from mpisgd.delays import (CommDelay, Compute, Constant, Exponential, Pareto, ShiftedExponential,
                           parse_comm, parse_compute)
from mpisgd.stragglers import Stragglers, wait

N = 20000


# ---- parsing ----------------------------------------------------------------

@pytest.mark.parametrize("spec, model, canonical", [
    ("exp:0.02", Compute(Exponential(0.02)), "exp:0.02"),
    ("shifted-exp:0.01,0.02", Compute(ShiftedExponential(0.01, 0.02)), "shifted-exp:0.01,0.02"),
    ("shifted-exp:0,1e-3", Compute(ShiftedExponential(0.0, 0.001)), "shifted-exp:0,0.001"),
    ("pareto:3,0.01", Compute(Pareto(3.0, 0.01)), "pareto:3,0.01"),
    ("slow:1=4", Compute(None, ((1, 4.0),)), "slow:1=4"),
    ("slow:3=4,0=2", Compute(None, ((0, 2.0), (3, 4.0))), "slow:0=2,3=4"),
    ("exp:0.02+slow:0=2,3=4", Compute(Exponential(0.02), ((0, 2.0), (3, 4.0))),
     "exp:0.02+slow:0=2,3=4"),
    (" slow:1=1.5 + pareto:2.5,1 ", Compute(Pareto(2.5, 1.0), ((1, 1.5),)),
     "pareto:2.5,1+slow:1=1.5"),
])
def test_parse_compute_forms(spec, model, canonical):
    parsed = parse_compute(spec)
    assert parsed == model
    assert str(parsed) == canonical
    assert parse_compute(str(parsed)) == parsed


def test_parse_compute_empty_is_none():
    assert parse_compute(None) is None
    assert parse_compute("") is None
    assert parse_compute("  ") is None


GRAMMAR = ("straggler must be exp:MEAN, shifted-exp:SHIFT,MEAN, pareto:SHAPE,SCALE or "
           "slow:W=FACTOR,... (joined by +), got ")


@pytest.mark.parametrize("spec, message", [
    ("foo:1", GRAMMAR + "'foo:1'"),
    ("exp 1", GRAMMAR + "'exp 1'"),
    ("exp:1+foo", GRAMMAR + "'foo' in 'exp:1+foo'"),
    ("exp:1+", GRAMMAR + "'' in 'exp:1+'"),
    ("exp:-1", "straggler exp:MEAN needs MEAN > 0, got 'exp:-1'"),
    ("exp:0", "straggler exp:MEAN needs MEAN > 0, got 'exp:0'"),
    ("exp:abc", "straggler exp:MEAN needs MEAN > 0, got 'exp:abc'"),
    ("exp:nan", "straggler exp:MEAN needs MEAN > 0, got 'exp:nan'"),
    ("exp:inf", "straggler exp:MEAN needs MEAN > 0, got 'exp:inf'"),
    ("exp:1,2", "straggler exp:MEAN needs MEAN > 0, got 'exp:1,2'"),
    ("shifted-exp:-1,1", "straggler shifted-exp:SHIFT,MEAN needs SHIFT >= 0 and MEAN > 0, "
                         "got 'shifted-exp:-1,1'"),
    ("shifted-exp:0,0", "needs SHIFT >= 0 and MEAN > 0, got 'shifted-exp:0,0'"),
    ("shifted-exp:1", "needs SHIFT >= 0 and MEAN > 0, got 'shifted-exp:1'"),
    ("pareto:0,1", "straggler pareto:SHAPE,SCALE needs SHAPE > 0 and SCALE > 0, "
                   "got 'pareto:0,1'"),
    ("pareto:3,-1", "needs SHAPE > 0 and SCALE > 0, got 'pareto:3,-1'"),
    ("pareto:3", "needs SHAPE > 0 and SCALE > 0, got 'pareto:3'"),
    ("slow:1=0.5", "straggler slow:W=FACTOR,... needs worker indices W >= 0 and FACTOR >= 1, "
                   "got 'slow:1=0.5'"),
    ("slow:-1=2", "needs worker indices W >= 0 and FACTOR >= 1, got 'slow:-1=2'"),
    ("slow:1.5=2", "got 'slow:1.5=2'"),
    ("slow:a=2", "got 'slow:a=2'"),
    ("slow:1", "got 'slow:1'"),
    ("slow:", "got 'slow:'"),
    ("slow:1=2,1=3", "straggler slow: names worker 1 twice, got 'slow:1=2,1=3'"),
    ("exp:1+pareto:3,1", "straggler takes at most one of exp, shifted-exp, pareto, "
                         "got 'exp:1+pareto:3,1'"),
    ("slow:1=2+slow:2=2", "straggler takes at most one slow: term, got 'slow:1=2+slow:2=2'"),
])
def test_parse_compute_errors(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        parse_compute(spec)
    assert str(err.value).startswith("straggler ")
    with pytest.raises(ValueError, match=re.escape(message)):
        Stragglers(spec, None, seed=0, worker=0)


@pytest.mark.parametrize("spec, model", [
    ("0.01", CommDelay(Constant(0.01))),
    ("2", CommDelay(Constant(2.0))),
    ("exp:0.005", CommDelay(Exponential(0.005))),
    (None, None), ("", None), ("0", None), ("0.0", None),
])
def test_parse_comm_forms(spec, model):
    parsed = parse_comm(spec)
    assert parsed == model
    if parsed is not None:
        assert parse_comm(str(parsed)) == parsed


@pytest.mark.parametrize("spec", ["-1", "abc", "nan", "inf", "exp:0", "exp:-2", "exp:", "exp:x",
                                  "pareto:3,1"])
def test_parse_comm_errors(spec):
    message = f"comm_delay must be SECONDS >= 0 or exp:MEAN, got {spec!r}"
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_comm(spec)


def test_check_workers():
    s = Stragglers("exp:0.01+slow:0=2,7=4", None, seed=0, worker=0)
    s.check_workers(8)
    with pytest.raises(ValueError, match=re.escape(
            "straggler slow:7=4 names worker 7, but there are 4 workers (0..3)")):
        s.check_workers(4)
    with pytest.raises(ValueError, match="names worker 7, but there are 7 workers"):
        s.check_workers(7)
    Stragglers(None, "0.01", seed=0, worker=0).check_workers(1)


@pytest.mark.parametrize("seed, worker", [(-1, 0), (0, -1), (0, 1.5), (True, 0)])
def test_seed_and_worker_validated(seed, worker):
    with pytest.raises(ValueError, match="must be an integer >= 0"):
        Stragglers("exp:1", None, seed=seed, worker=worker)


def test_active():
    assert not Stragglers(None, None, 0, 0).active
    assert not Stragglers("", "0", 0, 0).active
    assert Stragglers("slow:1=2", None, 0, 0).active
    assert Stragglers(None, "exp:0.1", 0, 0).active


# ---- determinism ------------------------------------------------------------

def draws(s: Stragglers, n: int = 50) -> tuple[list, list]:
    return [s.compute(0.0) for _ in range(n)], [s.comm() for _ in range(n)]


def test_same_seed_and_worker_same_sequence():
    a = draws(Stragglers("pareto:3,0.01", "exp:0.01", seed=5, worker=2))
    b = draws(Stragglers("pareto:3,0.01", "exp:0.01", seed=5, worker=2))
    assert a == b
    assert len(set(a[0])) == len(a[0])          # really random, not a constant


def test_different_worker_or_seed_different_sequence():
    base = draws(Stragglers("exp:0.01", "exp:0.01", seed=5, worker=2))
    other_worker = draws(Stragglers("exp:0.01", "exp:0.01", seed=5, worker=3))
    other_seed = draws(Stragglers("exp:0.01", "exp:0.01", seed=6, worker=2))
    for other in (other_worker, other_seed):
        assert other[0] != base[0] and other[1] != base[1]


def test_shared_comm_same_across_workers():
    comms = [draws(Stragglers("exp:0.01", "exp:0.01", 5, w, shared_comm=True))[1]
             for w in range(3)]
    assert comms[0] == comms[1] == comms[2]
    computes = [draws(Stragglers("exp:0.01", "exp:0.01", 5, w, shared_comm=True))[0]
                for w in range(2)]
    assert computes[0] != computes[1]           # the compute stream stays per worker


def test_streams_independent_of_each_other_and_of_timing():
    ref = Stragglers("exp:0.01", "exp:0.02", seed=1, worker=0)
    expected_compute = [ref.compute(0.0) for _ in range(20)]
    expected_comm = [ref.comm() for _ in range(20)]
    mixed = Stragglers("exp:0.01", "exp:0.02", seed=1, worker=0)
    got_compute, got_comm = [], []
    for k in range(20):                         # interleaved, with varying step times
        got_comm.append(mixed.comm())
        got_compute.append(mixed.compute(0.001 * k))
    assert got_compute == expected_compute
    assert got_comm == expected_comm


# ---- distributions ----------------------------------------------------------

@pytest.mark.parametrize("spec, mean, sd", [
    ("exp:0.02", 0.02, 0.02),
    ("shifted-exp:0.01,0.02", 0.03, 0.02),
    ("pareto:3,0.01", 3 * 0.01 / 2, math.sqrt(0.01 ** 2 * 3 / (2 ** 2 * 1))),
])
def test_compute_sample_mean(spec, mean, sd):
    assert parse_compute(spec).mean == pytest.approx(mean)
    s = Stragglers(spec, None, seed=11, worker=0)
    x = np.array([s.compute(0.0) for _ in range(N)])
    assert abs(x.mean() - mean) < 4 * sd / math.sqrt(N)


def test_comm_sample_mean():
    s = Stragglers(None, "exp:0.005", seed=11, worker=0)
    x = np.array([s.comm() for _ in range(N)])
    assert abs(x.mean() - 0.005) < 4 * 0.005 / math.sqrt(N)
    c = Stragglers(None, "0.003", seed=11, worker=0)
    assert [c.comm() for _ in range(3)] == [0.003] * 3


def test_supports():
    s = Stragglers("shifted-exp:0.01,0.02", None, seed=3, worker=0)
    assert min(s.compute(0.0) for _ in range(2000)) >= 0.01
    p = Stragglers("pareto:1.5,0.01", None, seed=3, worker=0)
    assert min(p.compute(0.0) for _ in range(2000)) >= 0.01


def test_pareto_heavy_mean_is_infinite():
    assert parse_compute("pareto:1,0.01").mean == math.inf
    assert parse_compute("pareto:0.5,0.01").mean == math.inf
    assert parse_compute("pareto:2,0.01").mean == pytest.approx(0.02)


# ---- slow workers -----------------------------------------------------------

def test_slow_factor_exact():
    slow = Stragglers("slow:1=4", None, seed=0, worker=1)
    assert slow.compute(0.01) == (4 - 1) * 0.01
    assert slow.compute(0.0) == 0.0
    for w in (0, 2):
        assert Stragglers("slow:1=4", None, seed=0, worker=w).compute(0.01) == 0.0


def test_slow_factor_scales_the_sample_too():
    plain = Stragglers("exp:0.02", None, seed=4, worker=3)
    slow = Stragglers("exp:0.02+slow:0=2,3=4", None, seed=4, worker=3)
    for t in (0.0, 0.01, 0.05):
        x = plain.compute(t)
        assert slow.compute(t) == pytest.approx((4 - 1) * (t + x) + x, rel=1e-12)


def test_negative_step_time_refused():
    with pytest.raises(ValueError, match="step_seconds must be >= 0"):
        Stragglers("exp:0.02", None, 0, 0).compute(-0.1)


# ---- recording --------------------------------------------------------------

def test_summary_totals():
    s = Stragglers("exp:0.02+slow:0=2", "exp:0.01", seed=2, worker=0)
    computes = [s.compute(0.001 * k) for k in range(100)]
    comms = [s.comm() for _ in range(30)]
    got = s.summary()
    assert set(got) == {"compute_delay", "compute_count", "compute_max",
                        "comm_delay", "comm_count", "comm_max", "compute_drawn", "compute_cut"}
    assert got["compute_delay"] == pytest.approx(sum(computes), rel=1e-12)
    assert got["compute_count"] == 100 and got["compute_max"] == max(computes)
    assert got["comm_delay"] == pytest.approx(sum(comms), rel=1e-12)
    assert got["comm_count"] == 30 and got["comm_max"] == max(comms)


def test_summary_inactive_is_zero():
    s = Stragglers(None, None, seed=2, worker=0)
    assert s.compute(0.5) == 0.0 and s.comm() == 0.0
    assert s.summary() == {"compute_delay": 0.0, "compute_count": 1, "compute_max": 0.0,
                           "comm_delay": 0.0, "comm_count": 1, "comm_max": 0.0,
                           "compute_drawn": 0.0, "compute_cut": 0}


# ---- wait -------------------------------------------------------------------

def test_wait_returns_early_when_interrupted():
    calls = []

    def interrupted():
        calls.append(1)
        return len(calls) >= 3

    start = time.perf_counter()
    assert wait(2.0, interrupted, poll=0.001) is True
    assert time.perf_counter() - start < 1.0
    assert len(calls) == 3


def test_wait_full_time():
    start = time.perf_counter()
    assert wait(0.05, lambda: False) is False
    assert time.perf_counter() - start >= 0.05
    start = time.perf_counter()
    assert wait(0.03) is False
    assert time.perf_counter() - start >= 0.03


def test_wait_nonpositive():
    calls = []
    assert wait(0.0, lambda: calls.append(1) or True) is True
    assert wait(-1.0, lambda: calls.append(1) or False) is False
    assert len(calls) == 2
    start = time.perf_counter()
    assert wait(-1.0) is False and wait(0.0) is False
    assert time.perf_counter() - start < 0.5


def test_a_delay_cut_short_records_what_was_slept():
    s = Stragglers("shifted-exp:0.2,1e-300", None, seed=0, worker=0)
    drawn = s.compute(0.0, record=False)
    assert drawn == pytest.approx(0.2) and s.summary()["compute_count"] == 0
    t0 = time.perf_counter()
    spent = s.spend(drawn, lambda: time.perf_counter() - t0 > 0.02)
    assert 0.02 <= spent < 0.15
    got = s.summary()
    assert got["compute_delay"] == spent and got["compute_max"] == spent
    assert got["compute_drawn"] == drawn and got["compute_cut"] == 1 and got["compute_count"] == 1
    assert s.spend(s.compute(0.0, record=False)) == pytest.approx(0.2)        # not cut: all of it
    assert s.summary()["compute_cut"] == 1
    restored = Stragglers("shifted-exp:0.2,1e-300", None, seed=0, worker=0)
    restored.load_state_dict(s.state_dict())
    assert restored.summary() == s.summary()


def test_stream_domains_are_distinct_and_keys_have_their_arity():
    """The table of mpisgd/streams.py: one number per domain, a fixed number of parts
    (SeedSequence pads short keys with zeros: [a, b] and [a, b, 0] are one stream)."""
    from mpisgd import streams
    numbers = [number for number, _ in streams.DOMAINS.values()]
    assert len(set(numbers)) == len(numbers) and min(numbers) > 0
    assert streams.key(streams.EPOCH, 3, 1, 2) == [5, 3, 1, 2]
    with pytest.raises(ValueError, match=r"stream MATCHA takes 2 parts after its domain"):
        streams.generator(streams.MATCHA, 3)
    assert np.array_equal(np.random.SeedSequence([5, 3]).generate_state(2),
                          np.random.SeedSequence([5, 3, 0]).generate_state(2))   # why arity
    a = streams.generator(streams.SHARD_IID, 1).random(4)
    b = streams.generator(streams.MATCHA, 1, 0).random(4)
    assert not np.array_equal(a, b)        # version 1: [1, 1] for both


def test_the_projector_draws_from_its_own_stream():
    from mpisgd import streams
    from mpisgd.network import Network
    from mpisgd.projection import Exponential as Exp, Workload, model_step
    with streams.recording() as seen:
        model_step(Workload("local", 4, 4e3, Exp(0.01), {"tau": 4}), 4,
                   Network(alpha=1e-5, beta=1e-9))
    assert [(domain, key) for _, domain, key in seen] == [(streams.PROJECTION, (14, 0))]
