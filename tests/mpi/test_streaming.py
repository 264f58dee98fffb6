"""Streaming fragments (--fragments, --fragment-delay, --fragment-alpha): Streaming DiLoCo.

* F = 1 with no delay is plain local SGD (every iterate, the final round);
* F fragments, D steps of overlap, the mixing weight alpha, with and without a Nesterov
  outer step, equal the dense oracle (reference.streaming) at every step;
* the peak bytes of a round fall by F, exactly;
* a checkpoint taken with a fragment in flight continues identically;
* impossible settings are refused, naming the option.

float64 throughout: the tolerance covers summation order only.
"""
import pytest
import torch

import mpisgd
from mpisgd import reference
from mpisgd.algorithms import local
from mpisgd.errors import OptionError
from helpers import ATOL, D, RTOL, regression_grad, regression_loss, regression_run

ETA = 0.05


def x0():
    return torch.linspace(-1.0, 1.0, D, dtype=torch.float64)


def run(steps, comm, **options):
    return regression_run("local", x0(), steps, comm, ETA, **options)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("tau", [1, 3])
def test_one_fragment_without_delay_is_local_sgd(comm, tau, monkeypatch):
    """F = 1, D = 0 through the fragments' path (forced: by default it takes the plain
    round) equals the plain round at every step and after the final round."""
    steps = 3 * tau + 1
    plain, want = run(steps, comm, tau=tau)
    assert not plain.round.stepwise
    monkeypatch.setattr(local, "streams", lambda opts: True)
    stream, got = run(steps, comm, tau=tau)
    assert stream.round.stepwise and stream.rounds == plain.rounds
    for k in range(steps):
        assert torch.allclose(got[k], want[k], rtol=RTOL, atol=ATOL), k
    plain.finish()
    stream.finish()
    assert stream.rounds == plain.rounds
    assert torch.allclose(stream.flat.data, plain.flat.data, rtol=RTOL, atol=ATOL)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("fragments, tau, delay, alpha, outer", [
    (1, 3, 1, 0.0, None),
    (2, 4, 0, 0.0, None),
    (3, 6, 2, 0.5, None),
    (2, 4, 1, 0.0, ("nesterov", 0.7, 0.9)),
    (3, 3, 2, 0.3, ("nesterov", 0.7, 0.9)),
])
def test_fragments_equal_the_oracle(comm, fragments, tau, delay, alpha, outer):
    steps = 3 * tau + 2
    extra = {"outer": outer[0], "outer_lr": outer[1], "outer_momentum": outer[2]} if outer else {}
    algo, trace = run(steps, comm, tau=tau, fragments=fragments, fragment_delay=delay,
                      fragment_alpha=alpha, **extra)
    assert algo.round.stepwise
    _, oracle = reference.streaming(x0(), regression_grad, ETA, comm.size, steps, tau,
                                    fragments, delay, alpha, outer, trace=True)
    for k in range(steps):
        assert torch.allclose(trace[k], oracle[k][:, comm.rank], rtol=RTOL, atol=ATOL), k
    algo.finish()                          # every worker holds the same model
    assert torch.equal(algo.flat.data, comm.bcast(algo.flat.data.clone(), root=0))


@pytest.mark.mpi(min_size=2)
def test_peak_round_bytes_fall_by_the_number_of_fragments(comm):
    steps, tau = 6, 3
    one, _ = run(steps, comm, tau=tau, fragments=1, fragment_delay=1)
    three, _ = run(steps, comm, tau=tau, fragments=3, fragment_delay=1)
    s1, s3 = one.round.series(), three.round.series()
    if comm.size > 1:
        assert s1["streaming/round_bytes_max"] == 2 * (comm.size - 1) / comm.size * D * 8
        assert s3["streaming/round_bytes_max"] == s1["streaming/round_bytes_max"] / 3
    assert three.rounds == 3 * one.rounds            # the same bytes in all, in F times the rounds
    assert three.comm.bytes_sent == pytest.approx(one.comm.bytes_sent)
    one.finish()                                     # no exchange left in flight
    three.finish()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("compress", ["none", "int8"])
def test_checkpoint_with_a_fragment_in_flight_continues_identically(comm, compress):
    steps, stop, opts = 13, 7, dict(tau=4, fragments=2, fragment_delay=2, fragment_alpha=0.25,
                                    outer="nesterov", compress=compress)
    reference_run, want = run(steps, comm, **opts)
    want_bytes = reference_run.comm.bytes_sent
    first, _ = run(stop, comm, **opts)              # fragment 1 posted at step 6, lands at 8
    assert first.round.in_flight
    state = first.state_dict()                      # completes the exchange (not the round)
    second, _ = run(0, comm, **opts)
    second.load_state_dict(state)
    for step in range(stop, steps):
        second.optimizer.zero_grad()
        regression_loss(second.model, comm.rank, step).backward()
        second.step()
        assert torch.allclose(second.flat.data, want[step], rtol=RTOL, atol=ATOL), step
    assert second.comm.bytes_sent == want_bytes           # the exchange in flight counted once
    assert second.round.round_bytes == reference_run.round.round_bytes
    reference_run.finish()
    second.finish()
    assert torch.equal(second.flat.data, reference_run.flat.data)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("outer", [None, "nesterov"])
def test_a_round_landed_at_the_last_step_needs_no_final_round(comm, outer):
    """tau 4, D = 1: the round posted at step 4 lands at step 5 and replaces x, so the
    workers agree; finish() adds no round (with an outer momentum one would move x)."""
    extra = {"outer": outer} if outer else {}
    algo, _ = run(5, comm, tau=4, fragments=1, fragment_delay=1, **extra)
    before, rounds, sent = algo.flat.data.clone(), algo.rounds, algo.comm.bytes_sent
    assert torch.equal(before, comm.bcast(before, root=0))
    algo.finish()
    assert torch.equal(algo.flat.data, before)
    assert (algo.rounds, algo.comm.bytes_sent) == (rounds, sent)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("compress", ["fp16", "int8", "topk:0.5", "powersgd:1"])
def test_a_compressed_round_counts_all_its_bytes(comm, compress):
    algo, _ = run(8, comm, tau=2, fragments=2, compress=compress)
    figures = algo.round.series()
    rounds = figures["compress/rounds"]
    assert rounds == algo.rounds == 8
    assert figures["streaming/round_bytes_mean"] * rounds == pytest.approx(
        figures["compress/bytes"])
    algo.finish()


@pytest.mark.parametrize("options, name", [
    ({"tau": 2, "fragments": 3}, "fragments"),
    ({"tau": 2, "fragment_delay": 2}, "fragment_delay"),
    ({"tau": 4, "fragments": 2, "schedule": "adacomm", "adacomm_interval": 1.0}, "fragments"),
    ({"tau": 4, "fragments": 2, "momentum_policy": "average"}, "momentum_policy"),
    ({"fragment_alpha": 1.0}, "fragment_alpha"),
])
def test_impossible_fragment_settings_are_named(options, name):
    with pytest.raises(OptionError) as err:
        mpisgd.spec("local", **options)
    assert err.value.name == name
