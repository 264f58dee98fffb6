"""The adaptive schedules on their own: AdaComm's rule and PR-SGD Algorithm 3's budget."""
import math

import pytest
import torch
from mpi4py import MPI

import mpisgd
from mpisgd.schedule import AdaComm, Budget, RoundStats, STAT_FIELDS, make
from helpers import classifier


def stats(loss, elapsed, first=None, steps=4, seconds=0.1, workers=2):
    """Every worker reporting the same round."""
    row = dict(loss_sum=loss * steps, loss_count=steps, first_loss=loss if first is None else first,
               steps=steps, seconds=seconds, elapsed=elapsed)
    return RoundStats([[row[f] for f in STAT_FIELDS]] * workers)


def test_round_stats_columns():
    s = RoundStats([[2.0, 4, 1.5, 4, 0.2, 3.0], [6.0, 4, 2.5, 2, 0.2, 3.5]])
    assert s.loss == 1.0                      # (2 + 6) / 8
    assert s.first_loss == 2.0
    assert s.elapsed == 3.5
    assert s.fastest_step == pytest.approx(0.05)


def test_adacomm_decides_once_per_interval_by_the_rule_and_never_increases():
    s = AdaComm(16, interval=10.0)
    s.round_done(16, 1.0, stats(3.0, 1.0, first=9.0), lr=0.1)    # F_0 = 9 (the first losses)
    assert s.tau == 16 and s.history == [(0.0, 16, 9.0)]
    s.round_done(32, 5.0, stats(1.0, 5.0), lr=0.1)                # before T0: no decision
    assert s.tau == 16 and len(s.history) == 1
    s.round_done(48, 10.5, stats(1.0, 10.5), lr=0.1)              # sqrt(1/9) * 16 = 5.33 -> 6
    assert s.tau == 6
    s.round_done(54, 12.0, stats(0.25, 12.0), lr=0.1)             # same interval: no decision
    assert s.tau == 6
    s.round_done(60, 25.0, stats(4.0, 25.0), lr=0.1)              # the rule says 11: clamped
    assert s.tau == 6
    s.round_done(66, 31.0, stats(0.09, 31.0), lr=0.1)             # sqrt(0.01) * 16 = 1.6 -> 2
    assert s.tau == 2
    assert [t for _, t, _ in s.history] == [16, 6, 6, 2]
    assert not s.communicate(67) and s.communicate(68)          # every tau = 2 steps now


def test_adacomm_rule_with_the_learning_rate_coupling():
    s = AdaComm(8, interval=1.0, lr_exp=0.5)
    s.round_done(8, 0.5, stats(1.0, 0.5, first=1.0), lr=0.2)
    assert s.rule(1.0, 0.05) == math.ceil(math.sqrt(0.25) * 8)    # sqrt(eta_l / eta_0) = 1/2
    assert s.rule(0.0, 0.2) == 1                                  # never below 1


def test_adacomm_without_losses_says_how_to_give_them():
    s = AdaComm(4, interval=1.0)
    empty = RoundStats([[0.0, 0, 0.0, 4, 0.1, 0.1]])
    with pytest.raises(ValueError, match=r"algo.step\(loss\)"):
        s.round_done(4, 0.1, empty, lr=0.1)


def test_budget_rounds_end_when_one_more_step_would_overshoot():
    s = Budget(8, seconds=1.0)
    assert not s.communicate(1, now=0.0)          # the first round starts at 0
    # step k at time t: ends when t (k + 1/2) / k >= 1
    assert not s.communicate(2, now=0.6)          # 0.6 * 2.5 / 2 = 0.75
    assert not s.communicate(3, now=0.8)          # 0.8 * 3.5 / 3 = 0.93
    assert s.communicate(4, now=0.9)              # 0.9 * 4.5 / 4 = 1.01
    s.round_done(4, 0.9)
    assert not s.communicate(5, now=1.2)          # a new round: 0.3 * 1.5 = 0.45


def test_budget_slow_worker_takes_fewer_steps():
    """Steps of 0.1 s (fast) and 0.4 s (slow) in a 0.8 s budget: 8 and 2 steps."""
    for step_time, expected in ((0.1, 8), (0.4, 2)):
        s = Budget(8, seconds=0.8)
        s.round_done(0, 0.0)
        k = next(k for k in range(1, 100) if s.communicate(k, now=k * step_time))
        assert k == expected


def test_budget_from_the_first_round():
    s = Budget(4)
    assert s.needs_stats and s.seconds is None
    assert [k for k in range(1, 9) if s.communicate(k, now=0.0)][:1] == [4]
    s.round_done(4, 0.4, stats(1.0, 0.4, steps=4, seconds=0.4))
    assert s.seconds == pytest.approx(0.4)        # tau x the fastest mean step (0.1 s)


def test_post_local_rounds_every_step_then_every_tau():
    from mpisgd.schedule import PostLocal
    s = make({"schedule": "post-local", "tau": 4, "local_after": 3})
    assert isinstance(s, PostLocal)
    assert [t for t in range(1, 20) if s.communicate(t)] == [1, 2, 3, 7, 11, 15, 19]
    assert [s.period(t) for t in (0, 2, 3, 10)] == [1, 1, 4, 4]
    with pytest.raises(ValueError, match="local_after must be given with schedule post-local"):
        make({"schedule": "post-local", "tau": 4, "local_after": None})


def test_make_and_option_errors():
    assert isinstance(make({"schedule": "budget", "tau": 2, "round_budget": None}), Budget)
    model = classifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="adacomm_interval must be given"):
        mpisgd.build("local", model, opt, MPI.COMM_SELF, schedule="adacomm")
    with pytest.raises(ValueError, match="round_budget must be a positive number"):
        mpisgd.build("gossip", model, opt, MPI.COMM_SELF, schedule="budget", round_budget=-1)
    with pytest.raises(ValueError, match="schedule must be one of"):
        mpisgd.build("easgd", model, opt, MPI.COMM_SELF, schedule="weekly")
