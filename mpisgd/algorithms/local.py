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

Optimizer state (momentum buffers, Adam moments) is a policy:
``momentum_policy="local"`` (default, as PR-SGD and PyTorch's
PostLocalSGDOptimizer: each worker keeps its own), ``"average"`` (averaged
with the parameters, one more Allreduce per round) or ``"reset"`` (zeroed
at each round, a true restart).

Example::

    algo = mpisgd.build("local", model, opt, tau=8)
    for x, y in loader:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        algo.step()
    algo.finish()
"""
from __future__ import annotations

import torch
from .._mpi import MPI

from .. import schedule
from ..options import Option
from .scheduled import Scheduled


class LocalSGD(Scheduled):
    """Periodic model averaging (PR-SGD Algorithms 1, 2 and 3; AdaComm).

    Options:
        tau: communication period, first epoch length or AdaComm's tau_0 (default 8).
        schedule: ``"periodic"``, ``"time-varying"``, ``"adacomm"`` or ``"budget"``
            (with their options, :func:`mpisgd.schedule.options`).
        momentum_policy: ``"local"``, ``"average"`` or ``"reset"``.
    """

    name = "local"
    options = schedule.options(8, "local, gossip, cooperative") + (
        Option("momentum_policy", "local", "optimizer state at a round (local)",
               str, choices=("local", "average", "reset")),
    )

    def __init__(self, model, optimizer, comm=None, **options):
        super().__init__(model, optimizer, comm, **options)
        self._state_flat = None

    def validate(self):
        super().validate()
        if self.opts["tau"] == 1 and self.opts["schedule"] == "periodic":
            self.warn("local SGD with tau = 1 averages parameters every step: with plain SGD "
                      "it is sync SGD with more traffic per step; use --algo sync")

    def _round_step(self) -> None:
        """The local step that ends a round, then the average."""
        self.optimizer.step()
        self.average()

    def finish(self) -> None:
        """Final synchronisation: average once more unless the last step ended a round.

        Afterwards every worker holds the consensus model, so saving
        ``model.state_dict()`` on any rank saves the model PR-SGD outputs.
        """
        if not self.finished and self._since:
            self.average()
        super().finish()

    @property
    def replicas_identical(self) -> bool:
        """After :meth:`finish` (until the next step) every worker holds the average."""
        return self.finished

    def average(self) -> None:
        """One round: x_i <- mean_j x_j (and buffers), then the optimizer-state policy."""
        self._round_delay()
        self.comm.allreduce(self.flat.data, average=True)
        if self.flat.buffers.numel():
            self.comm.allreduce(self.flat.buffers, average=True)
        policy = self.opts["momentum_policy"]
        if policy != "local":
            if policy == "reset":
                for t in self._state_tensors():
                    t.zero_()
            else:
                self._average_state()
        self.rounds += 1

    def _state_tensors(self) -> list[torch.Tensor]:
        """The optimizer's per-parameter floating state of the parameter's shape."""
        return [t for _, t in self._state_entries()]

    def _state_entries(self) -> list[tuple[tuple[int, str], torch.Tensor]]:
        out = []
        for i, p in enumerate(self.flat.params):
            for key, v in sorted(self.optimizer.state.get(p, {}).items()):
                if torch.is_tensor(v) and v.is_floating_point() and v.shape == p.shape:
                    out.append(((i, key), v))
        return out

    def _average_state(self) -> None:
        """Average optimizer state over workers, on a layout every rank agrees on.

        A rank may lack some state (a parameter that never had a gradient
        there): the layout is the union over ranks, with zeros standing in
        for what a rank lacks; what it lacks stays absent afterwards.
        """
        have = {}
        for (i, _), tensor in self._state_entries():
            have.setdefault(i, []).append(tensor)
        # Same optimizer everywhere (checked at construction): a parameter that
        # has state has the same entries on every rank that has it, so the
        # per-parameter maximum of the counts is the union layout.
        counts = torch.tensor([len(have.get(i, ())) for i in range(len(self.flat.params))],
                              dtype=torch.int64)
        self.comm.allreduce(counts, op=MPI.MAX)
        n = sum(int(c) * p.numel() for c, p in zip(counts, self.flat.params))
        if self._state_flat is None or self._state_flat.numel() != n:
            self._state_flat = torch.empty(n, dtype=self.flat.dtype, device=self.flat.device)
        self._state_flat.zero_()
        views, offset = [], 0
        for i, (count, p) in enumerate(zip(counts.tolist(), self.flat.params)):
            for j in range(count):
                view = self._state_flat[offset: offset + p.numel()]
                offset += p.numel()
                if i in have:
                    view.copy_(have[i][j].reshape(-1))
                    views.append((have[i][j], view))
        self.comm.allreduce(self._state_flat, average=True)
        for tensor, view in views:
            tensor.copy_(view.view_as(tensor))
