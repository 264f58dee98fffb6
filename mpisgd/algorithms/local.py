"""Local SGD / Parallel Restarted SGD: average parameters every tau local steps.

Cooperative SGD A(tau, J, 0) (Wang & Joshi 2018); PR-SGD Algorithm 1 (Yu,
Yang, Zhu 2019): each worker runs its own optimizer on its own data,

    x_i <- opt_step(x_i, g_i(x_i)),    and after every tau-th step
    x_i <- (1/m) sum_j x_j              (one in-place Allreduce of the flat buffer),

with floating buffers (BatchNorm statistics) averaged in the same round.
The schedule (:mod:`mpisgd.schedule`) times the rounds: ``periodic``
(every tau steps), ``time-varying`` (PR-SGD Algorithm 2: epoch s has
K_s = ceil(tau s^period_exp) steps at rate lr s^lr_exp), ``adacomm``
(tau shrinks with the training loss) or ``budget`` (PR-SGD Algorithm 3:
rounds of a fixed number of seconds, faster workers taking more steps).

Optimizer state (momentum buffers, Adam moments) is a policy
(:mod:`mpisgd.algorithms.state`): ``momentum_policy="local"`` (default, as
PR-SGD and PyTorch's PostLocalSGDOptimizer: each worker keeps its own),
``"average"`` (averaged with the parameters, one more Allreduce per round)
or ``"reset"`` (zeroed at each round, a true restart).

The preset: a :class:`~mpisgd.algorithms.rounds.Average` round composed
with the schedule and the state policy (:class:`~mpisgd.algorithms.scheduled.Scheduled`).

``outer`` (DiLoCo, SlowMo: :mod:`mpisgd.algorithms.outer`) steps the average
as a pseudo-gradient. ``fragments``, ``fragment_delay`` and ``compress``
make the round the stepwise pseudo-gradient round of
:mod:`mpisgd.algorithms.streaming` (``Fragmented``): F staggered fragments, each exchange
overlapped with D steps, optionally compressed with error feedback
(:mod:`mpisgd.compress`); F = 1, D = 0 without compression is this
algorithm's plain round.

Example::

    algo = mpisgd.build("local", model, opt, tau=8)
    for x, y in loader:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        algo.step()
    algo.finish()
"""
from __future__ import annotations

from ..errors import OptionError
from .options import COMPRESS, GROUPS, MOMENTUM_POLICY, OUTER, SCHEDULE, STREAMING, TAU
from .rounds import Average
from .scheduled import Scheduled
from .streaming import Fragmented
from .traits import Traits


def streams(opts: dict) -> bool:
    """Whether ``opts`` ask for the pseudo-gradient path (fragments, a delay, compression)."""
    return opts["fragments"] > 1 or opts["fragment_delay"] > 0 or opts["compress"] != "none"


class LocalSGD(Scheduled):
    """Periodic model averaging (PR-SGD Algorithms 1, 2 and 3; AdaComm).

    Options:
        tau: communication period, first epoch length or AdaComm's tau_0 (default 8).
        schedule: ``"periodic"``, ``"time-varying"``, ``"adacomm"`` or ``"budget"``
            (with their options, :data:`mpisgd.algorithms.options.SCHEDULE`).
        momentum_policy: ``"local"``, ``"average"`` or ``"reset"``.
    """

    name = "local"
    options = (TAU.but(default=8), *SCHEDULE, MOMENTUM_POLICY, *OUTER, *STREAMING, *COMPRESS,
               *GROUPS)
    final_round = True

    @classmethod
    def traits(cls, opts=None) -> Traits:
        return Traits("lockstep", periodic=True)

    @classmethod
    def check(cls, opts: dict) -> None:
        super().check(opts)
        if opts["tau"] == 1 and opts["schedule"] == "periodic" and opts["fragments"] == 1:
            cls.warn("local SGD with tau = 1 averages parameters every step: with plain SGD "
                     "it is sync SGD with more traffic per step; use --algo sync")
        if not streams(opts):
            return
        what = "fragments" if opts["fragments"] > 1 else \
            "fragment_delay" if opts["fragment_delay"] else "compress"
        if opts["group_tau"] > 1:
            raise OptionError(what, f"does not combine with group_tau > 1 (got "
                              f"{opts['group_tau']}): the fragments run on each rank's block, "
                              "which the group's ranks then share")
        if opts["schedule"] != "periodic":
            raise OptionError(what, f"needs schedule periodic, got {opts['schedule']}")
        if opts["momentum_policy"] != "local":
            raise OptionError("momentum_policy", f"must be local with {what} (each worker keeps "
                              f"its optimizer state), got {opts['momentum_policy']}")
        if opts["fragments"] > opts["tau"]:
            raise OptionError("fragments", f"must be at most tau = {opts['tau']} (one fragment "
                              f"round per step at most), got {opts['fragments']}")
        if opts["fragment_delay"] >= opts["tau"]:
            raise OptionError("fragment_delay", f"must be less than tau = {opts['tau']} (a "
                              f"fragment's round lands before its next one), got "
                              f"{opts['fragment_delay']}")

    def make_round(self):
        """The plain round, or with fragments, a delay or compression the stepwise
        :class:`~mpisgd.algorithms.streaming.Fragmented` round (with groups, on this
        rank's block, across the groups)."""
        if not streams(self.opts):
            return Average(self.peers, self.x, self.flat.buffers)
        offsets, shapes = self.layout()
        return Fragmented(self.peers, self.x, self.flat.buffers, self.opts, offsets, shapes,
                          self.compressor(),
                          self.stragglers.comm if self.stragglers is not None else None)

    def make_outer(self):
        return None if streams(self.opts) else super().make_outer()   # per fragment there

    @property
    def replicas_identical(self) -> bool:
        """After :meth:`finish` (until the next step) every worker holds the average."""
        return self.finished
