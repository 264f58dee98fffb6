"""Synchronous Elastic Averaging SGD (Zhang, Choromanska, LeCun, NIPS 2015).

Every worker i keeps its own x_i, tied to a centre variable c by an elastic
force. In every round (every ``tau`` local steps), with the x_i at which the
gradients of this step were taken, the elastic and gradient steps are
simultaneous, as the paper writes them:

    e_i  = alpha (x_i - c)
    x_i <- x_i - e_i - eta g_i(x_i)          (the optimizer's step)
    c   <- c + sum_i e_i

alpha = eta rho is the moving rate; beta = p alpha (paper default 0.9, so
alpha = 0.9 / p). Between rounds workers take plain local steps. In matrix
form the round is X <- X W_alpha - eta G with X = [x_1 .. x_p, c] and
W_alpha = [[(1-alpha) I, alpha 1], [alpha 1^T, 1 - p alpha]] (v = 1): the
"simultaneous" ordering of :func:`mpisgd.reference.cooperative`, where
Cooperative SGD's A(tau, W_alpha, 1) takes the gradient step first.

Where the centre lives (``center``):

* ``"replicated"`` (default): every rank holds c; a round is the fused
  elastic kernel (:func:`mpisgd.ops.elastic`), one ``Iallreduce`` of the
  e_i overlapped with the optimizer step, and c += sum e_i. Communication:
  one Allreduce of the model per round.
* ``"rank0"``: rank 0 holds c (and trains); a round broadcasts c, each rank
  computes its e_i, and an ``Ireduce`` sums them into rank 0's c.

``compress`` (replicated centre) sends the e_i compressed with error
feedback (:class:`~mpisgd.compress.CompressedMean`): c += m mean_i D(C(e_i + r_i)).

The preset: an :class:`~mpisgd.algorithms.rounds.Elastic` round under a
schedule (:class:`~mpisgd.algorithms.scheduled.Scheduled`).

Rounds happen in step calls tau, 2 tau, ...; the paper's round at t = 0 is
a no-op (every x_i starts at c). Example::

    algo = mpisgd.build("easgd", model, opt, tau=4)     # alpha = 0.9 / workers
    for x, y in loader:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        algo.step()
    algo.finish()
    theta = algo.consensus()                            # the centre variable
"""
from __future__ import annotations

import torch

from ..errors import OptionError
from .base import Algorithm
from .options import CENTER, COMPRESS, ELASTIC, GROUP_SIZE, OUTER, SCHEDULE, TAU
from .rounds import Elastic
from .scheduled import Scheduled
from .streaming import shapes_within
from .traits import Traits


def moving_rate(opts: dict, workers: int) -> float:
    """alpha: the ``alpha`` option, else ``beta / workers`` (the paper's parametrisation)."""
    return opts["alpha"] if opts["alpha"] is not None else opts["beta"] / workers


def checked_moving_rate(algo: Algorithm, all_in_round: bool) -> float:
    """``algo``'s alpha (:func:`moving_rate`), warning when :func:`stability_warning` says why
    it may diverge at the optimizer's learning rate (``all_in_round``: every worker meets
    the centre in one round, as synchronous EASGD)."""
    alpha = moving_rate(algo.opts, algo.workers)
    warning = stability_warning(algo.optimizer.param_groups[0]["lr"], alpha, algo.workers,
                                all_in_round)
    if warning:
        algo.warn(warning)
    return alpha


def stability_warning(eta: float, alpha: float, workers: int, all_in_round: bool) -> str | None:
    """Why (eta, alpha) may diverge, or ``None``.

    The paper's region for round-robin EASGD on f(x) = x^2/2 (any p):
    0 <= eta <= 2 and 0 <= alpha <= (4 - 2 eta)/(4 - eta). With all p
    workers in one round (synchronous EASGD) the mixing matrix W_alpha has
    the eigenvalue 1 - (p+1) alpha, which must stay above -1: alpha < 2/(p+1).
    """
    bound = (4 - 2 * eta) / (4 - eta) if eta < 4 else float("-inf")
    if not (0 <= eta <= 2 and 0 <= alpha <= bound):
        return (f"EASGD: (eta, alpha) = ({eta:g}, {alpha:g}) is outside the stability region "
                f"0 <= eta <= 2, 0 <= alpha <= (4 - 2 eta)/(4 - eta) of Zhang et al. (2015)")
    if all_in_round and alpha >= 2 / (workers + 1):
        return (f"EASGD: alpha = {alpha:g} >= 2/(workers+1) = {2 / (workers + 1):g}: the centre "
                f"overshoots (W_alpha has the eigenvalue 1 - (p+1) alpha = "
                f"{1 - (workers + 1) * alpha:g}); lower --alpha or --beta")
    return None


class EASGD(Scheduled):
    """Synchronous EASGD; the centre replicated (Allreduce) or on rank 0.

    Options:
        tau: local steps per round (default 1: the paper's rule).
        alpha: moving rate (default beta / workers); beta: 0.9.
        center: ``"replicated"`` or ``"rank0"``.
        schedule: when rounds happen (:data:`mpisgd.algorithms.options.SCHEDULE`;
            default every tau steps).
    """

    name = "easgd"
    options = (TAU, *ELASTIC, CENTER, *SCHEDULE, *OUTER, *COMPRESS, GROUP_SIZE)

    @classmethod
    def check(cls, opts: dict) -> None:
        super().check(opts)
        if opts["compress"] != "none" and opts["center"] != "replicated":
            raise OptionError("compress", f"needs center replicated (the e_i's compressed "
                              f"mean lands on every rank), got center {opts['center']}")

    @classmethod
    def traits(cls, opts=None) -> Traits | None:
        """Lock-step with a replicated centre (one Allreduce a round); rank 0's centre (a
        Bcast and a Reduce) is not modelled."""
        if opts and opts.get("center") == "rank0":
            return None
        return Traits("lockstep", periodic=True)

    def make_round(self) -> Elastic:
        alpha = checked_moving_rate(self, all_in_round=True)
        make, (offsets, shapes) = self.compressor(), self.layout()
        compressed = None if make is None else \
            (lambda e: make(e, shapes_within(offsets, shapes, 0, e.numel())))
        return Elastic(self.peers, self.x, alpha, self.opts["center"], compressed)

    @property
    def alpha(self) -> float:
        return self.round.alpha

    @property
    def center(self) -> torch.Tensor:
        """c (on rank 0 only, with ``center="rank0"``; with groups, this rank's block)."""
        return self.round.center

    def consensus(self) -> torch.Tensor:
        """The centre variable c, the same on every rank."""
        return self._whole(self.round.consensus(self._peer_telemetry))
