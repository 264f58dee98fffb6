"""Every algorithm option, declared once: its name, default, type, rule and help.

An algorithm lists the :class:`Option` s it accepts (``options = ...``), by
name from here; :func:`resolve` checks user values against that list, so a
wrong option gets the same message from the API (``mpisgd.spec``,
``mpisgd.build``) and the CLI, on every rank, before any communication::

    mpisgd.algorithms.options.OptionError: tau must be a positive integer, got 0

:class:`OptionError` carries the option's ``name``: the CLI spells it as its
flag (``--tau must be ...``) without reading the message. Options that
several algorithms share (the schedule, the elastic rate, the gossip graph,
the server ranks, injected delays) are declared once below, with one help
text; an algorithm may change a default (:meth:`Option.but`), and the CLI
generates each option's "applies to" list and defaults from the registry
(:func:`mpisgd.algorithms.option_help`).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

from ..compress.codecs import parse as parse_codec
from ..errors import OptionError
from ..groups import parse as parse_group_size
from ..delays import parse_comm, parse_compute

__all__ = ["Option", "OptionError", "coerce", "resolve"]


@dataclass(frozen=True)
class Option:
    """An algorithm option: its name (Python spelling), default, type and rule.

    ``check(value) -> bool`` accepts a value; ``must`` completes the error
    sentence "<name> must be <must>, got <value>". ``parse(value)`` reads a
    structured value (a delay spec, "C,ETA_MAX") and raises ``ValueError``
    with the sentence's end when it cannot; the option keeps the text.
    """
    name: str
    default: Any
    help: str
    kind: type = float
    choices: tuple | None = None
    check: Callable[[Any], bool] | None = None
    must: str = ""
    parse: Callable[[Any], Any] | None = None
    #: The resolved value is ``parse``'s result, not the text (``group_size``: 2 or "node").
    parsed: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def but(self, **changes) -> "Option":
        """This option with another default or choices (one declaration, one help text)."""
        return dataclasses.replace(self, **changes)

    def resolve(self, value: Any) -> Any:
        """Convert and validate ``value``; raises :class:`OptionError` naming the option."""
        if value is None:
            return self.default
        if self.kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)       # a spec such as comm-delay: 0.05 in a YAML file
        try:
            value = coerce(self.kind, value)
        except ValueError as err:
            raise OptionError(self.name, f"must be {err}, got {value!r}") from None
        if self.choices is not None and value not in self.choices:
            raise OptionError(self.name, f"must be one of {', '.join(map(str, self.choices))}, "
                                         f"got {value!r}")
        if self.check is not None and not self.check(value):
            raise OptionError(self.name, f"must be {self.must}, got {value!r}")
        if self.parse is not None:
            try:
                out = self.parse(value)
            except OptionError:
                raise
            except ValueError as err:
                raise OptionError(self.name, f"must be {err}, got {value!r}") from None
            if self.parsed:
                return out
        return value


def coerce(kind: type, value: Any) -> Any:
    """``value`` as ``kind`` (str, int, float, bool), strictly; ``ValueError(what it must be)``.

    No silent truncation (2.7 is not an int), no booleans as numbers, finite
    floats only, numbers from strings ("1e3", "4") as a YAML file or a flag
    gives them, booleans only from true/false/yes/no/1/0.
    """
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower() if isinstance(value, (str, int)) else ""
        if text in ("true", "yes", "1"):
            return True
        if text in ("false", "no", "0"):
            return False
        raise ValueError("true or false")
    if kind is str:
        if not isinstance(value, str):
            raise ValueError("a string")
        return value
    must = "an integer" if kind is int else "a finite number"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(must)
    try:
        number = float(value)
    except ValueError:
        raise ValueError(must) from None
    if not math.isfinite(number) or (kind is int and not number.is_integer()):
        raise ValueError(must)
    return int(number) if kind is int else number


def resolve(algorithm: str, declared: tuple[Option, ...], given: dict) -> dict:
    """Resolve ``given`` against ``declared``: defaults filled in, unknown names refused."""
    known = {o.name: o for o in declared}
    unknown = sorted(set(given) - set(known))
    if unknown:
        accepted = ", ".join(sorted(known)) or "none"
        raise OptionError(unknown[0], f"does not apply to algorithm {algorithm!r} "
                                      f"(it accepts: {accepted})")
    return {name: opt.resolve(given.get(name)) for name, opt in known.items()}


def _positive_int(name: str, default, help: str) -> Option:
    return Option(name, default, help, int, check=lambda v: v >= 1, must="a positive integer")


def _positive(name: str, default, help: str) -> Option:
    return Option(name, default, help, float, check=lambda v: v > 0, must="a positive number")


def _seed(name: str, help: str) -> Option:
    return Option(name, None, help, int, check=lambda v: v >= 0, must="a non-negative integer")


def _in_unit(name: str, help: str) -> Option:
    return Option(name, None, help, float, check=lambda v: 0 < v <= 1, must="in (0, 1]")


def parse_staleness_lr(value) -> tuple[float, float]:
    """``"C,ETA_MAX"`` -> ``(C, eta_max)``; ``ValueError`` saying what it must be."""
    try:
        c, eta = (float(v) for v in str(value).split(","))
    except ValueError:
        raise ValueError("C,ETA_MAX (two positive numbers)") from None
    if not (c > 0 and eta > 0 and math.isfinite(c) and math.isfinite(eta)):
        raise ValueError("C,ETA_MAX with C > 0 and ETA_MAX > 0")
    return c, eta


SCHEDULES = ("periodic", "time-varying", "adacomm", "budget", "post-local")
EXCHANGES = ("auto", "neighbor", "persistent", "allreduce")

# ---- every algorithm: injected delays (mpisgd.stragglers) ---------------------------------
STRAGGLERS = (
    Option("straggler", None, "injected compute delay per step: exp:MEAN, shifted-exp:SHIFT,MEAN, "
           "pareto:SHAPE,SCALE, slow:W=FACTOR,... (joined by +)", str, parse=parse_compute),
    Option("comm_delay", None, "injected delay per communication round: SECONDS or exp:MEAN", str,
           parse=parse_comm),
    _seed("straggler_seed", "seed of the injected delays (the CLI: --seed)"),
)

# ---- when to communicate (mpisgd.schedule) ---------------------------------------------------
TAU = _positive_int("tau", 1, "local steps between communication rounds (the period; "
                    "time-varying: the first epoch's; adacomm: tau_0)")
SCHEDULE = (
    Option("schedule", "periodic", "when rounds happen: periodic, time-varying (PR-SGD Alg. 2), "
           "adacomm, budget (PR-SGD Alg. 3), or post-local (every step until --local-after, "
           "then every tau)", str, choices=SCHEDULES),
    Option("period_exp", 1 / 3, "time-varying: epoch length grows like s^period_exp", float,
           check=lambda v: v >= 0, must="non-negative"),
    Option("lr_exp", -2 / 3, "time-varying: learning rate scales like s^lr_exp", float,
           check=lambda v: v <= 0, must="zero or negative"),
    _positive("adacomm_interval", None, "adacomm: seconds T0 between period decisions"),
    Option("adacomm_lr_exp", 0.5, "adacomm: exponent c of the learning-rate ratio "
           "(eta_l/eta_0)^c in the period rule", float),
    _positive_int("local_after", None, "post-local: the step t' up to which a round follows "
                      "every step (Lin et al.'s mini-batch phase)"),
    _positive("round_budget", None, "budget: seconds per round (default: tau times the fastest "
              "worker's step time in the first round)"),
)

# ---- workers that are groups of ranks (mpisgd.groups) ---------------------------------------
GROUP_SIZE = Option("group_size", 1, "ranks per worker: each worker is a group of this many "
                    "consecutive ranks training as sync SGD, the algorithm running between "
                    "groups; node: one group per node (1: every rank a worker)", str,
                    parse=parse_group_size, parsed=True)
GROUPS = (
    GROUP_SIZE,
    _positive_int("group_tau", 1, "with groups: steps between averagings inside a group (1: "
                  "gradients every step, sync SGD; k > 1: parameters every k steps, "
                  "hierarchical local SGD; a round across groups averages inside first)"),
)

# ---- how: averaging and its optimizer state ---------------------------------------------
MOMENTUM_POLICY = Option("momentum_policy", "local", "optimizer state at a round: local (each "
                         "worker keeps its own), average or reset", str,
                         choices=("local", "average", "reset"))
BUCKET_MB = _positive("bucket_mb", 25.0, "gradient bucket size in MB")
OVERLAP = Option("overlap", False, "overlap communication with computation (sync: each gradient "
                 "bucket's Allreduce with the rest of backward; gossip: a round's exchange with the "
                 "next local step)", bool, must="true or false")

# ---- elastic averaging ------------------------------------------------------------------------
ELASTIC = (
    Option("alpha", None, "elastic moving rate alpha = eta rho (default beta / workers)", float,
           check=lambda v: 0 < v < 1, must="in (0, 1)"),
    Option("beta", 0.9, "beta = workers * alpha, used when --alpha is not given", float,
           check=lambda v: v > 0, must="positive"),
)
CENTER = Option("center", "replicated", "where the centre variable lives: replicated (every "
                "rank, Allreduce) or rank0 (easgd); dedicated (server ranks) or rank0 (rank 0 "
                "trains and serves; async-easgd, eamsgd, downpour)", str,
                choices=("replicated", "rank0"))
DELTA = Option("delta", 0.99, "EAMSGD's local Nesterov momentum", float,
               check=lambda v: 0 <= v < 1, must="in [0, 1)")

# ---- gossip and Cooperative SGD -------------------------------------------------------------
TOPOLOGY = Option("topology", "ring", "the graph or W: ring, torus, hypercube, exponential, "
                  "complete, star, erdos-renyi, one-peer-exponential, easgd (cooperative), or a "
                  ".npy/.csv/edge-list file", str)
GOSSIP = (
    Option("weights", "metropolis", "mixing weights of a graph", str,
           choices=("metropolis", "uniform")),
    _in_unit("graph_p", "erdos-renyi: edge probability (default 2 ln n / n)"),
    _in_unit("matcha", "MATCHA: turn the graph into random matchings, each active with this "
             "probability per round"),
    _seed("topology_seed", "seed of random graphs and matchings (the CLI: --seed)"),
    Option("exchange", "auto", "how neighbours exchange: auto, neighbor (collective), persistent "
           "(requests) or allreduce (W = 11^T/m)", str, choices=EXCHANGES),
)
AUX = Option("aux", 0, "auxiliary variables v: the last v nodes of W", int,
             check=lambda v: v >= 0, must="a non-negative integer")

# ---- server ranks ---------------------------------------------------------------------------
SERVERS = _positive_int("servers", 1, "dedicated server ranks, each holding a 1/S slice of the "
                        "shared vector")
K = _positive_int("k", None, "K: gradients (k-batch-*) or distinct workers (k-sync, k-async) per "
                  "server update (default: all workers for k-sync, k-async; 1 otherwise)")
STALENESS_LR = Option("staleness_lr", None, "staleness-adaptive rate C,ETA_MAX: gradient i's rate "
                      "min(C/||w - w_tau(i)||^2, ETA_MAX)", str, parse=parse_staleness_lr)

# ---- outer optimizer on the round's pseudo-gradient (mpisgd.algorithms.outer) ---------------
OUTER = (
    Option("outer", "none", "outer optimizer stepping the anchor on the round's pseudo-gradient "
           "x_anchor - average: none (the plain algorithm), sgd (SlowMo), nesterov (DiLoCo) or "
           "adam", str, choices=("none", "sgd", "nesterov", "adam")),
    Option("outer_lr", 0.7, "outer learning rate (DiLoCo: 0.7; sgd 1 with momentum 0 is the "
           "plain algorithm)", float, check=lambda v: v > 0, must="a positive number"),
    Option("outer_momentum", 0.9, "outer momentum (sgd, nesterov; adam: beta1)", float,
           check=lambda v: 0 <= v < 1, must="in [0, 1)"),
)

# ---- streaming fragments (mpisgd.algorithms.streaming) ------------------------------------
STREAMING = (
    _positive_int("fragments", 1, "F: the flat buffer in F contiguous fragments, fragment f "
                  "averaged at steps = f tau/F (mod tau) (Streaming DiLoCo)"),
    Option("fragment_delay", 0, "D: inner steps a fragment's Iallreduce overlaps before it is "
           "applied (0 <= D < tau)", int, check=lambda v: v >= 0, must="a non-negative integer"),
    Option("fragment_alpha", 0.0, "weight of the local fragment when the global one arrives: "
           "x <- alpha x_local + (1 - alpha) x_global", float, check=lambda v: 0 <= v < 1,
           must="in [0, 1)"),
)


# ---- compressed exchanges (mpisgd.compress) -----------------------------------------------
COMPRESS = (
    Option("compress", "none", "compress what is averaged (sync: gradient buckets; local: the "
           "pseudo-gradient; easgd: the elastic differences): none, fp16, bf16, int8, "
           "topk:RATIO or powersgd:RANK", str,
           parse=parse_codec),
    Option("error_feedback", True, "carry each round's compression error into the next",
           bool, must="true or false"),
)
