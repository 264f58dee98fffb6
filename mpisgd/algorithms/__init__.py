"""The algorithm registry: CLI names to classes, and :func:`build`."""
from __future__ import annotations

from ..options import Option, resolve
from .base import Algorithm
from .centered import EAMSGD, AsyncEASGD, Downpour
from .elastic import EASGD
from .gossip import Cooperative, Gossip
from .local import LocalSGD
from .ps import FAMILY
from .sync import SyncSGD

ALGORITHMS: dict[str, type[Algorithm]] = {
    cls.name: cls for cls in (SyncSGD, LocalSGD, EASGD, AsyncEASGD, EAMSGD, Downpour, *FAMILY,
                              Gossip, Cooperative)}


def lookup(name: str) -> type[Algorithm]:
    """The class of algorithm ``name``; ``ValueError`` listing the known ones."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r} (known: {', '.join(ALGORITHMS)})") from None


def validate(name: str, options: dict) -> dict:
    """Resolve ``options`` for algorithm ``name`` without building anything."""
    cls = lookup(name)
    return resolve(name, cls.declared(), options)


def all_options() -> dict[str, Option]:
    """Every algorithm option by name (one spec per name across algorithms)."""
    out: dict[str, Option] = {}
    for cls in ALGORITHMS.values():
        for opt in cls.declared():
            out.setdefault(opt.name, opt)
    return out


def build(name: str, model, optimizer, comm=None, device=None, **options) -> Algorithm:
    """Wrap ``model`` and ``optimizer`` in algorithm ``name`` on communicator ``comm``.

    ``comm`` defaults to ``MPI.COMM_WORLD``; options are the CLI options with
    underscores (``tau=4``). ``device``: ``None`` (default) trains where the
    model is; ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` binds each rank
    (``cuda``: GPU ``local_rank % gpus``, :mod:`mpisgd.device`) and moves the
    model, its optimizer state and everything the algorithm allocates there.
    Raises ``ValueError`` naming a bad option on every rank before any
    communication.
    """
    return lookup(name)(model, optimizer, comm, device=device, **options)
