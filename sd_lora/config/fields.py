"""The one way config fields are declared: a default plus help text (and `path=True` for paths)."""

from __future__ import annotations

from dataclasses import field

__all__ = ["option"]


def option(default, help: str, **extra):
    """A dataclass field with a default and help text; lists get a fresh copy per instance."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})
