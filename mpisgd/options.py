"""Declared algorithm options: one place that validates and documents them.

Each algorithm lists its :class:`Option` s. ``mpisgd.build`` and the command
line resolve user values against that list, so a wrong option gets the same
message from the API and the CLI, on every rank, before any communication::

    ValueError: tau must be a positive integer, got 0
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Option:
    """An algorithm option: its name (Python spelling), default, type and rule.

    ``check(value) -> bool`` accepts a value; ``must`` completes the error
    sentence "<name> must be <must>, got <value>".
    """
    name: str
    default: Any
    help: str
    kind: type = float
    choices: tuple | None = None
    check: Callable[[Any], bool] | None = None
    must: str = ""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def resolve(self, value: Any) -> Any:
        """Convert and validate ``value``; raises ``ValueError`` naming the option."""
        if value is None:
            return self.default
        if self.kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)       # a spec such as comm-delay: 0.05 in a YAML file
        try:
            value = coerce(self.kind, value)
        except ValueError as err:
            raise ValueError(f"{self.name} must be {err}, got {value!r}") from None
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{self.name} must be one of {', '.join(map(str, self.choices))}, "
                             f"got {value!r}")
        if self.check is not None and not self.check(value):
            raise ValueError(f"{self.name} must be {self.must}, got {value!r}")
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


def positive_int(name: str, default: int, help: str) -> Option:
    return Option(name, default, help, int, check=lambda v: v >= 1, must="a positive integer")


def positive_float(name: str, default: float, help: str) -> Option:
    return Option(name, default, help, float, check=lambda v: v > 0, must="a positive number")


def resolve(algorithm: str, declared: tuple[Option, ...], given: dict) -> dict:
    """Resolve ``given`` against ``declared``: defaults filled in, unknown names refused."""
    known = {o.name: o for o in declared}
    unknown = sorted(set(given) - set(known))
    if unknown:
        accepted = ", ".join(sorted(known)) or "none"
        raise ValueError(f"option {unknown[0]} does not apply to algorithm {algorithm!r} "
                         f"(it accepts: {accepted})")
    return {name: opt.resolve(given.get(name)) for name, opt in known.items()}
