"""What happens to the optimizer's state (momentum, Adam moments) at a round.

``momentum_policy``:

* ``"local"`` (default, as PR-SGD and PyTorch's PostLocalSGDOptimizer): each
  worker keeps its own; nothing to do;
* ``"reset"``: zeroed at each round, a true restart;
* ``"average"``: averaged over workers with the parameters (one more
  Allreduce per round).
"""
from __future__ import annotations

import torch

from .._mpi import MPI


def entries(optimizer, params) -> list[tuple[tuple[int, str], torch.Tensor]]:
    """The optimizer's per-parameter floating state of the parameter's shape, in a
    stable order: ((parameter index, key), tensor)."""
    out = []
    for i, p in enumerate(params):
        for key, v in sorted(optimizer.state.get(p, {}).items()):
            if torch.is_tensor(v) and v.is_floating_point() and v.shape == p.shape:
                out.append(((i, key), v))
    return out


class Keep:
    """Each worker keeps its own state."""

    def after_round(self) -> None:
        pass


class Reset:
    """The state is zeroed at each round."""

    def __init__(self, optimizer, flat):
        self.optimizer, self.flat = optimizer, flat

    def after_round(self) -> None:
        for _, t in entries(self.optimizer, self.flat.params):
            t.zero_()


class AverageState:
    """The state is averaged over workers, on a layout every rank agrees on.

    A rank may lack some state (a parameter that never had a gradient
    there): the layout is the union over ranks, with zeros standing in for
    what a rank lacks; what it lacks stays absent afterwards.
    """

    def __init__(self, optimizer, flat, comm):
        self.optimizer, self.flat, self.comm = optimizer, flat, comm
        self._buffer = None

    def after_round(self) -> None:
        params = self.flat.params
        have = {}
        for (i, _), tensor in entries(self.optimizer, params):
            have.setdefault(i, []).append(tensor)
        # Same optimizer everywhere (checked at construction): a parameter that
        # has state has the same entries on every rank that has it, so the
        # per-parameter maximum of the counts is the union layout.
        counts = torch.tensor([len(have.get(i, ())) for i in range(len(params))], dtype=torch.int64)
        self.comm.allreduce(counts, op=MPI.MAX)
        n = sum(int(c) * p.numel() for c, p in zip(counts, params))
        if self._buffer is None or self._buffer.numel() != n:
            self._buffer = torch.empty(n, dtype=self.flat.dtype, device=self.flat.device)
        self._buffer.zero_()
        views, offset = [], 0
        for i, (count, p) in enumerate(zip(counts.tolist(), params)):
            for j in range(count):
                view = self._buffer[offset: offset + p.numel()]
                offset += p.numel()
                if i in have:
                    view.copy_(have[i][j].reshape(-1))
                    views.append((have[i][j], view))
        self.comm.allreduce(self._buffer, average=True)
        for tensor, view in views:
            tensor.copy_(view.view_as(tensor))


def policy(name: str, optimizer, flat, comm):
    """The policy named ``name`` (``local``, ``reset`` or ``average``)."""
    if name == "reset":
        return Reset(optimizer, flat)
    if name == "average":
        return AverageState(optimizer, flat, comm)
    return Keep()
