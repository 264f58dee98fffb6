"""The algorithm registry: CLI names to classes, :func:`spec`, :func:`build`, generated help.

Adding an algorithm: its module (options from :mod:`.options`, hooks of
:class:`~.base.Algorithm`, or a round under :class:`~.scheduled.Scheduled`),
one entry in :data:`ALGORITHMS`, a test, and docs/algorithms.md. The CLI
flags, their "applies to" lists and docs/options.md follow from here.
"""
from __future__ import annotations

from .async_center import EAMSGD, AsyncEASGD, Downpour
from .base import Algorithm, AlgorithmSpec
from .easgd import EASGD
from .gossip import Cooperative, Gossip
from .local import LocalSGD
from .options import Option, OptionError
from .ps import FAMILY
from .sync import SyncSGD

__all__ = ["ALGORITHMS", "Algorithm", "AlgorithmSpec", "Option", "OptionError", "lookup", "spec",
           "build", "all_options", "applies_to", "option_help"]

ALGORITHMS: dict[str, type[Algorithm]] = {
    cls.name: cls for cls in (SyncSGD, LocalSGD, EASGD, AsyncEASGD, EAMSGD, Downpour, *FAMILY,
                              Gossip, Cooperative)}


def lookup(name: str) -> type[Algorithm]:
    """The class of algorithm ``name``; ``ValueError`` listing the known ones."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r} (known: {', '.join(ALGORITHMS)})") from None


def spec(name: str, **options) -> AlgorithmSpec:
    """Algorithm ``name`` with ``options`` resolved and validated, without a model or MPI.

    Options are the CLI options with underscores (``tau=4``); a bad one raises
    :class:`OptionError` naming it (``err.name``). ``spec(...).bind(model,
    optimizer, comm)`` makes the algorithm::

        s = mpisgd.spec("gossip", topology="ring", tau=2)
        algo = s.bind(model, opt, comm=MPI.COMM_WORLD)
    """
    return lookup(name).spec(**options)


def build(name: str, model, optimizer, comm=None, device=None, **options) -> Algorithm:
    """Wrap ``model`` and ``optimizer`` in algorithm ``name`` on communicator ``comm``:
    ``spec(name, **options).bind(model, optimizer, comm, device)``.

    ``comm`` defaults to ``MPI.COMM_WORLD``; options are the CLI options with
    underscores (``tau=4``). ``device``: ``None`` (default) trains where the
    model is; ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` binds each rank
    (``cuda``: GPU ``local_rank % gpus``, :mod:`mpisgd.device`) and moves the
    model, its optimizer state and everything the algorithm allocates there.
    Raises ``ValueError`` (:class:`OptionError` for an option, naming it) on
    every rank before any communication.
    """
    return spec(name, **options).bind(model, optimizer, comm, device=device)


def all_options() -> dict[str, Option]:
    """Every algorithm option by name (each declared once in :mod:`.options`)."""
    out: dict[str, Option] = {}
    for cls in ALGORITHMS.values():
        for opt in cls.declared():
            out.setdefault(opt.name, opt)
    return out


def applies_to(name: str) -> dict[str, list[str]]:
    """Option ``name``'s default (as text) -> the algorithms that accept it with it."""
    def show(opt: Option) -> str:
        text = f"{opt.default:.4g}" if isinstance(opt.default, float) else str(opt.default)
        return text + (f" {{{','.join(opt.choices)}}}" if opt.choices else "")
    seen: dict[str, list[str]] = {}
    for algo, cls in ALGORITHMS.items():
        for opt in cls.declared():
            if opt.name == name:
                seen.setdefault(show(opt), []).append(algo)
    return seen


def option_help(name: str) -> str:
    """The CLI help of option ``name``: its text, then the algorithms it applies to and
    their defaults, generated from the registry."""
    opt = all_options()[name]
    seen = applies_to(name)
    every = sum(len(a) for a in seen.values()) == len(ALGORITHMS)
    parts = []
    for default, algos in seen.items():
        who = "all algorithms" if every else ", ".join(algos)
        parts.append(who if default == "None" else f"{who}: default {default}")
    return f"{opt.help} ({'; '.join(parts)})"
