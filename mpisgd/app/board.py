"""``--tensorboard DIR``: every logged row as TensorBoard scalars, from rank 0, beside the record.

Each row of ``/metrics`` (:mod:`mpisgd.app.record`) becomes one scalar per
column, ``metrics/NAME`` at global step ``step``, written with torch's
``SummaryWriter`` and flushed at every log point (a TensorBoard open on DIR
shows the run as it goes). The HDF5 record stays the reference; this is a
view for users who live in TensorBoard. It needs the ``tensorboard`` package
(``pip install 'mpisgd[tensorboard]'``), checked before training.
"""
from __future__ import annotations

import importlib.util

from ..errors import ConfigError


def check() -> None:
    """``ConfigError`` naming the extra when the tensorboard package is missing."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install "
                          "'mpisgd[tensorboard]' (or pip install tensorboard)")


class Board:
    """The TensorBoard scalars of one run in ``directory``."""

    def __init__(self, directory: str):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(directory)

    def log(self, row: dict) -> None:
        step = int(row["step"])
        for name, value in row.items():
            if name != "step":
                self.writer.add_scalar(f"metrics/{name}", float(value), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
