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

Example::

    algo = mpisgd.build("local", model, opt, tau=8)
    for x, y in loader:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        algo.step()
    algo.finish()
"""
from __future__ import annotations

from .options import MOMENTUM_POLICY, OUTER, SCHEDULE, TAU
from .rounds import Average
from .scheduled import Scheduled


class LocalSGD(Scheduled):
    """Periodic model averaging (PR-SGD Algorithms 1, 2 and 3; AdaComm).

    Options:
        tau: communication period, first epoch length or AdaComm's tau_0 (default 8).
        schedule: ``"periodic"``, ``"time-varying"``, ``"adacomm"`` or ``"budget"``
            (with their options, :data:`mpisgd.algorithms.options.SCHEDULE`).
        momentum_policy: ``"local"``, ``"average"`` or ``"reset"``.
    """

    name = "local"
    options = (TAU.but(default=8), *SCHEDULE, MOMENTUM_POLICY, *OUTER)
    final_round = True

    @classmethod
    def check(cls, opts: dict) -> None:
        super().check(opts)
        if opts["tau"] == 1 and opts["schedule"] == "periodic":
            cls.warn("local SGD with tau = 1 averages parameters every step: with plain SGD "
                     "it is sync SGD with more traffic per step; use --algo sync")

    def make_round(self) -> Average:
        return Average(self.comm, self.flat.data, self.flat.buffers)

    def finish(self) -> None:
        """Final synchronisation: average once more unless the last step ended a round.

        Afterwards every worker holds the consensus model, so saving
        ``model.state_dict()`` on any rank saves the model PR-SGD outputs.
        """
        super().finish()

    @property
    def replicas_identical(self) -> bool:
        """After :meth:`finish` (until the next step) every worker holds the average."""
        return self.finished
