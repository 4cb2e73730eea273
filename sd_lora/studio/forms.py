"""The new-run form, generated from the config schema; form values <-> config dicts <-> TOML.

Validation is the config loader's own (`config_from_dict`), so the form shows the messages `--validate` prints,
each next to the field it names. Paths in a form are client paths (`ROOT/sub/folder`, see paths.py); they are
resolved under the roots before the config is validated, and `output.dir` is always the run's own folder.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping, Union

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from sd_lora.config.load import ConfigError, config_from_dict, dump_config
from sd_lora.config.schema import Config
from sd_lora.errors import SdLoraError
from sd_lora.studio.paths import PathRefused, Roots

__all__ = ["Field", "form_sections", "form_values", "data_from_form", "validate", "export_toml", "parse_toml",
           "preset_data", "MANAGED"]

MANAGED = {"output.dir"}  # the studio chooses these (each run writes under its own folder)
SUBSETS_KEY = "data.subsets"


@dataclass(frozen=True)
class Field:
    key: str  # section.name
    kind: str  # bool, tristate, choice, int, float, str, lines, toml
    choices: tuple[str, ...]
    optional: bool
    default: str  # as shown in the form
    help: str
    path: bool | str


def _args(tp) -> tuple[tuple, bool]:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = tuple(a for a in typing.get_args(tp) if a is not type(None))
        return args, True
    return (tp,), False


def _field(section: str, f: dataclasses.Field, tp) -> Field | None:
    (inner, *more), optional = _args(tp)
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    key, help_text, path = f"{section}.{f.name}", f.metadata.get("help", ""), f.metadata.get("path", False)
    origin = typing.get_origin(inner)
    if more:  # e.g. int | str: written as a TOML value
        return Field(key, "toml", (), optional, _show(default), help_text, path)
    if origin is Literal:
        return Field(key, "choice", tuple(str(a) for a in typing.get_args(inner)), optional, _show(default), help_text, path)
    if inner is bool:
        if optional:
            return Field(key, "tristate", ("true", "false"), True, _show(default), help_text, path)
        return Field(key, "bool", (), False, _show(default), help_text, path)
    if inner in (int, float):
        return Field(key, inner.__name__, (), optional, _show(default), help_text, path)
    if inner is str:
        return Field(key, "str", (), optional, _show(default), help_text, path)
    if origin is list:
        (item,) = typing.get_args(inner)
        if dataclasses.is_dataclass(item):
            return None  # [[data.subsets]]: kept as TOML beside the form
        if item is str:
            return Field(key, "lines", (), optional, "\n".join(default or []), help_text, path)
        return Field(key, "toml", (), optional, _show(default), help_text, path)
    return None


def _show(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) if not isinstance(v, str) else repr(v) for v in value) + "]"
    return str(value)


def form_sections() -> list[tuple[str, list[Field]]]:
    sections = []
    for section in dataclasses.fields(Config):
        cls = section.default_factory  # type: ignore[misc]
        hints = typing.get_type_hints(cls)
        fields = [_field(section.name, f, hints[f.name]) for f in dataclasses.fields(cls)]
        sections.append((section.name, [f for f in fields if f is not None and f.key not in MANAGED]))
    return sections


def _fields() -> dict[str, Field]:
    return {f.key: f for _, fields in form_sections() for f in fields}


def form_values(data: dict) -> dict[str, str]:
    """What each form field shows for a config dict (defaults where the dict says nothing)."""
    values = {}
    for key, f in _fields().items():
        section, name = key.split(".", 1)
        value = data.get(section, {}).get(name, dataclasses.MISSING) if isinstance(data.get(section), dict) else dataclasses.MISSING
        if value is dataclasses.MISSING:
            values[key] = f.default
        elif f.kind == "lines" and isinstance(value, list):
            values[key] = "\n".join(str(v) for v in value)
        else:
            values[key] = _show(value) if not isinstance(value, str) else value
    subsets = data.get("data", {}).get("subsets") if isinstance(data.get("data"), dict) else None
    values[SUBSETS_KEY] = _subsets_toml(subsets) if subsets else ""
    return values


def _subsets_toml(subsets: list) -> str:
    from sd_lora.config.load import _toml_value

    blocks = []
    for item in subsets:
        if isinstance(item, dict):
            blocks.append("[[data.subsets]]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in item.items()
                                                         if v is not None))
    return "\n".join(blocks)


def data_from_form(form: Mapping[str, str]) -> tuple[dict, list[str]]:
    """The config dict a submitted form describes: only fields that differ from their defaults."""
    data: dict = {}
    problems: list[str] = []
    for key, f in _fields().items():
        section, name = key.split(".", 1)
        if key not in form:  # not sent: the default (a browser sends every field; a checkbox through its hidden twin)
            continue
        if f.kind == "bool":
            value = str(form.get(key, "")).lower() in ("on", "true", "1", "yes")
            if _show(value) != f.default:
                data.setdefault(section, {})[name] = value
            continue
        raw = str(form.get(key, "")).replace("\r\n", "\n")
        if raw.strip() == f.default.strip():
            continue
        if f.kind == "lines":
            value = [line.strip() for line in raw.split("\n") if line.strip()]
        elif raw.strip() == "" and f.optional:
            continue
        elif f.kind in ("str", "choice"):
            value = raw.strip()
        else:
            try:
                value = tomllib.loads(f"v = {raw.strip()}")["v"]
            except tomllib.TOMLDecodeError:
                value = raw.strip()  # the loader then says "expected integer, got 'abc'"
        data.setdefault(section, {})[name] = value
    subsets = str(form.get(SUBSETS_KEY, "")).strip()
    if subsets:
        try:
            parsed = tomllib.loads(subsets)
            items = parsed.get("data", {}).get("subsets")
            if not isinstance(items, list) or set(parsed) != {"data"} or set(parsed["data"]) != {"subsets"}:
                problems.append(f"{SUBSETS_KEY}: write only [[data.subsets]] tables here")
            else:
                data.setdefault("data", {})["subsets"] = items
        except tomllib.TOMLDecodeError as e:
            problems.append(f"{SUBSETS_KEY}: not valid TOML: {e}")
    return data, problems


def _path_fields(cls, prefix: str):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        yield f"{prefix}.{f.name}", f, hints[f.name]


def _map_paths(data: dict, roots: Roots, problems: list[str]) -> dict:
    """A copy of `data` whose path values are real paths under the roots (or problems saying why not)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}

    def fix(table: dict, cls, where: str) -> None:
        for key, f, _tp in _path_fields(cls, where):
            kind = f.metadata.get("path", False)
            value = table.get(f.name)
            if not kind or not isinstance(value, str) or not value.strip() or key in MANAGED:
                continue
            if kind == "model" and (value.startswith("builtin:") or _looks_like_hub_id(value, roots)):
                continue
            try:
                table[f.name] = str(roots.resolve(value, must_exist=False))
            except PathRefused as e:
                problems.append(f"{key}: {e}")

    for section in dataclasses.fields(Config):
        if isinstance(out.get(section.name), dict):
            fix(out[section.name], section.default_factory, section.name)  # type: ignore[arg-type]
    subsets = out.get("data", {}).get("subsets") if isinstance(out.get("data"), dict) else None
    if isinstance(subsets, list):
        from sd_lora.config.data import SubsetConfig

        out["data"]["subsets"] = [dict(s) if isinstance(s, dict) else s for s in subsets]
        for i, item in enumerate(out["data"]["subsets"]):
            if isinstance(item, dict):
                fix(item, SubsetConfig, f"data.subsets[{i}]")
    return out


def _looks_like_hub_id(value: str, roots: Roots) -> bool:
    parts = value.split("/")
    return (len(parts) == 2 and all(parts) and not value.startswith((".", "~"))
            and parts[0] not in {r.name for r in roots})


def validate(data: dict, roots: Roots, extra_problems: list[str] = ()) -> tuple[Config | None, list[str]]:
    """(config with real paths, []) or (None, every problem as `section.key: message`)."""
    problems = list(extra_problems)
    mapped = _map_paths(data, roots, problems)
    cfg = None
    try:
        cfg = config_from_dict(mapped, "the form", base_dir=None)
    except ConfigError as e:
        problems += e.problems
    except SdLoraError as e:
        problems.append(str(e))
    if cfg is not None and not problems and not cfg.data.dir and not cfg.data.subsets:
        problems.append("data.dir: choose the folder of training images (ROOT/sub/folder)")
    return (None, problems) if problems else (cfg, [])


def export_toml(data: dict) -> str:
    """The config dict as TOML, paths as the client wrote them (ROOT/sub/folder)."""
    from sd_lora.config.load import _toml_value

    lines = []
    for section, values in data.items():
        if not isinstance(values, dict):
            continue
        plain = {k: v for k, v in values.items() if k != "subsets"}
        if plain:
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in plain.items() if v is not None]
            lines.append("")
        if section == "data" and values.get("subsets"):
            lines.append(_subsets_toml(values["subsets"]))
    return "\n".join(lines).rstrip() + "\n"


def parse_toml(text: str, where: str = "the TOML") -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SdLoraError(f"{where}: not valid TOML: {e}") from e


def preset_data(path: Path, roots: Roots) -> dict:
    """A train_configs/ file as a config dict; its relative paths are rewritten as ROOT/... where they lie
    under a root (others stay as written and the form flags them)."""
    data = parse_toml(path.read_text(encoding="utf-8"), str(path.name))

    def rewrite(table: dict, cls) -> None:
        for _key, f, _tp in _path_fields(cls, ""):
            value = table.get(f.name)
            if f.metadata.get("path") and isinstance(value, str) and not value.startswith("builtin:"):
                candidate = (path.parent / value).resolve()
                if candidate.exists():
                    table[f.name] = roots.client_path(candidate) or value

    for section in dataclasses.fields(Config):
        if isinstance(data.get(section.name), dict):
            rewrite(data[section.name], section.default_factory)  # type: ignore[arg-type]
    data.get("output", {}).pop("dir", None)
    return data


def run_config_text(cfg: Config, out_dir: Path) -> str:
    """The TOML a run's `sd-lora train` reads: the validated config writing into the run's own folder."""
    cfg = dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, dir=str(out_dir)))
    return dump_config(cfg)
