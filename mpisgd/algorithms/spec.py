"""An algorithm's spec: its class and resolved options, pure (no model, no communicator)."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING
from dataclasses import dataclass
from typing import Mapping

import torch

from .. import groups
from ..errors import install_abort_hook

if TYPE_CHECKING:
    from .base import Algorithm


@dataclass(frozen=True)
class AlgorithmSpec:
    """An algorithm and its resolved, validated options; no model, no communicator.

    Made by :func:`mpisgd.spec` (``mpisgd.spec("gossip", topology="ring", tau=2)``);
    :meth:`bind` makes the algorithm. Equal specs make the same algorithm on
    any model, so one spec can be bound many times (a study, a test on
    several communicators).
    """
    cls: type
    options: Mapping

    @property
    def name(self) -> str:
        return self.cls.name

    def workers(self, size: int, node_ranks: int | None = None) -> int:
        """Workers among ``size`` ranks (``node_ranks`` per node, for ``group_size`` node);
        :class:`~mpisgd.errors.OptionError` if there are none or groups do not fit."""
        return self.cls.worker_count(size, self.options, node_ranks)

    def replicas(self, size: int, node_ranks: int | None = None) -> int:
        """Model replicas that train on data of their own (workers times group size)."""
        return self.workers(size, node_ranks) * groups.size_of(
            self.options.get("group_size", 1), node_ranks)

    def bind(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, comm=None,
             device=None) -> "Algorithm":
        """The algorithm on ``model`` and ``optimizer`` over ``comm`` (default
        ``MPI.COMM_WORLD``); collective. ``device``: see :func:`mpisgd.build`."""
        install_abort_hook()    # an exception on one rank will end the job (MPISGD_ABORT=0: not)
        return self.cls(model, optimizer, comm, device=device, spec=self)


def _outside_frame() -> int:
    """The ``stacklevel`` of the first caller outside the mpisgd package (for warnings)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("mpisgd."):
        frame, level = frame.f_back, level + 1
    return level
