"""The one way config fields are declared: a default plus help text (and `path=True` for paths).

`finite_first` is the one NaN/inf check of every section: every float field of a section must be a finite
number (TOML accepts `nan` and `inf`, and every range check `x <= 0` lets NaN through).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import field

__all__ = ["option", "non_finite", "finite_first"]


def option(default, help: str, **extra):
    """A dataclass field with a default and help text; lists get a fresh copy per instance."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


def non_finite(obj, where: str) -> dict[str, str]:
    """{'where.key': problem} for every float field of dataclass `obj` that holds NaN or +-inf."""
    found = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            key = f"{where}.{f.name}"
            found[key] = (f"{key}: must be a finite number, got {value!r}; set a real value (default "
                          f"{_default(f)})" if _default(f) is not None else
                          f"{key}: must be a finite number, got {value!r}; set a real value or leave it out")
    return found


def finite_first(obj, where: str, problems: list[str]) -> list[str]:
    """The NaN/inf problems of `obj`, then its other `problems` except those about the same keys (a range
    check on a NaN would only repeat the report with a less clear reason)."""
    bad = non_finite(obj, where)
    return list(bad.values()) + [p for p in problems if p.split(":", 1)[0] not in bad]


def _default(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING and f.default is not None else None
