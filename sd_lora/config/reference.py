"""The config reference (every key, default and help) as a Markdown table, generated from the schema."""

from __future__ import annotations

import dataclasses
import typing

from sd_lora.config.schema import Config

__all__ = ["config_reference"]


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return ""
    if value is None:
        return "unset"
    if isinstance(value, list):
        return ", ".join(map(str, value)) if value and not dataclasses.is_dataclass(value[0]) else "[]"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _rows(cls, prefix: str) -> list[str]:
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            rows.append(f"| `{prefix}.{f.name}` | [] | {f.metadata.get('help', '')} (array of tables) |")
            rows += _rows(typing.get_args(tp)[0], f"{prefix}.{f.name}[]")
            continue
        rows.append(f"| `{prefix}.{f.name}` | `{_default(f)}` | {f.metadata.get('help', '')} |")
    return rows


def config_reference() -> str:
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for section in dataclasses.fields(Config):
        lines += _rows(section.type if isinstance(section.type, type) else typing.get_type_hints(Config)[section.name],
                       section.name)
    return "\n".join(lines)


if __name__ == "__main__":
    print(config_reference())
