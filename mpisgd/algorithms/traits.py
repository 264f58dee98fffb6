"""What an algorithm declares about itself for the tools that model it (``mpisgd project``).

One source of truth: each algorithm class answers :meth:`Algorithm.traits
<mpisgd.algorithms.base.Algorithm.traits>`, and :mod:`mpisgd.projection`
picks its model from the answer, never from the algorithm's name, so a new
algorithm that declares its traits is projected without touching the
projector.
"""
from __future__ import annotations

from dataclasses import dataclass

FAMILIES = ("lockstep", "gossip", "server")


@dataclass(frozen=True)
class Traits:
    """How an algorithm's ranks wait for each other.

    Attributes:
        family: ``lockstep`` (every worker meets every round: an Allreduce),
            ``gossip`` (each waits for its neighbours) or ``server`` (workers
            exchange with server ranks; ``protocol`` says how).
        periodic: ``tau`` local steps per round (lockstep, gossip) or per push (server).
        protocol: the server's rules (:class:`~mpisgd.server.params.Protocol`):
            ``drop_stale`` (an update cancels and restarts everyone),
            ``distinct_workers``, ``reply_each``, ``wait_version``.
        k_all: K, when not given, is every worker (else 1).
    """
    family: str
    periodic: bool = False
    protocol: object = None
    k_all: bool = False

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {self.family!r}")

    @property
    def server_rules(self) -> tuple[bool, bool, bool]:
        """(an update cancels everyone, K distinct workers, a pusher waits for the update)."""
        p = self.protocol
        return (p.drop_stale, p.distinct_workers,
                p.wait_version or not (p.drop_stale or p.reply_each))
