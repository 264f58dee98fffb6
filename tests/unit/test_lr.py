"""--lr-schedule against torch's own schedulers, step by step, and its refusals."""
import math

import pytest
import torch

from mpisgd.app import lr
from mpisgd.app.config import from_sources
from mpisgd.errors import ConfigError

STEPS, BASE = 50, 0.2


def rates_of(make, steps=STEPS):
    """The rate of each of ``steps`` steps under the torch scheduler ``make(optimizer)``."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=BASE)
    sched, out = make(opt), []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def ours(kind, warmup=0, floor=0.0, milestones=(), gamma=0.1):
    f = lr.factor(kind, STEPS, warmup, floor, milestones, gamma)
    return rates_of(lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, f))


S = torch.optim.lr_scheduler


@pytest.mark.parametrize("kind, floor, theirs", [
    ("cosine", 0.0, lambda o: S.CosineAnnealingLR(o, T_max=STEPS)),
    ("cosine", 0.1, lambda o: S.CosineAnnealingLR(o, T_max=STEPS, eta_min=0.1 * BASE)),
    ("linear", 0.25, lambda o: S.LinearLR(o, 1.0, 0.25, total_iters=STEPS)),
    ("constant", 0.0, lambda o: S.ConstantLR(o, 1.0, total_iters=0)),
])
def test_each_schedule_is_torchs(kind, floor, theirs):
    assert ours(kind, floor=floor) == pytest.approx(rates_of(theirs), rel=1e-9, abs=1e-12)


def test_step_decay_is_multistep_and_warmup_is_linear_then_the_schedule():
    assert ours("step", milestones=[10, 30], gamma=0.5) == pytest.approx(
        rates_of(lambda o: S.MultiStepLR(o, [10, 30], 0.5)), rel=1e-12)
    W = 8
    warm_cos = rates_of(lambda o: S.SequentialLR(
        o, [S.LinearLR(o, 1 / W, 1.0, total_iters=W), S.CosineAnnealingLR(o, T_max=STEPS - W)],
        milestones=[W]))
    assert ours("cosine", warmup=W) == pytest.approx(warm_cos, rel=1e-9, abs=1e-12)
    assert ours("cosine", warmup=W)[W] == pytest.approx(BASE)       # the peak after warmup


def test_milestones_are_given_in_epochs_and_converted_to_steps():
    class Algo:
        is_worker, replicas = True, 4
    cfg = from_sources(None, dict(lr=BASE, lr_schedule="step:1,2.5", batch_size=8, accumulate=2,
                                  steps=100))
    cfg.validate()
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=BASE)
    sched = lr.scheduler(opt, cfg, Algo, 640)          # an epoch: 640 / (4 x 8 x 2) = 10 steps
    got = []
    for _ in range(30):
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert got[9] == BASE and got[10] == pytest.approx(BASE / 10)
    assert got[24] == pytest.approx(BASE / 10) and got[25] == pytest.approx(BASE / 100)


@pytest.mark.parametrize("flags, message", [
    (dict(lr_schedule="cosin"), "--lr-schedule must be one of constant, cosine, linear, "
                                "step:E1,E2,... (epochs > 0, increasing), got 'cosin'"),
    (dict(lr_schedule="step:3,1"), "--lr-schedule must be one of"),
    (dict(lr_schedule="step:"), "--lr-schedule must be one of"),
    (dict(warmup=-1), "--warmup must be a whole number of steps >= 0, got -1"),
    (dict(lr_min=0.5), "--lr-min must be in [0, --lr 0.05), got 0.5"),
    (dict(lr_gamma=0.0), "--lr-gamma must be in (0, 1], got 0.0"),
    (dict(algo="async", lr_schedule="cosine"), "--lr-schedule cosine does not combine with "
                                               "--algo async: the server steps the model"),
    (dict(algo="local", schedule="time-varying", warmup=5),
     "--lr-schedule constant with --warmup 5 does not combine with --algo local: "
     "--schedule time-varying sets the rate itself"),
])
def test_bad_schedules_are_refused_naming_the_flag(flags, message):
    cfg = from_sources(None, flags)
    with pytest.raises(ConfigError, match="^" + __import__("re").escape(message)):
        cfg.validate()


def test_the_cosine_ends_at_lr_min():
    f = lr.factor("cosine", STEPS, 5, 0.1)
    assert f(STEPS) == pytest.approx(0.1) and f(STEPS + 10) == pytest.approx(0.1)
    assert math.isclose(lr.factor("linear", STEPS, 0, 0.0)(STEPS // 2), 0.5)
