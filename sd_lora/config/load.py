"""TOML config + `section.key=value` overrides -> validated `Config`, every problem reported at once."""

from __future__ import annotations

import dataclasses
import re
import difflib
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from sd_lora.config.schema import Config
from sd_lora.config.sources import looks_like_path
from sd_lora.errors import SdLoraError

__all__ = ["ConfigError", "load_config", "config_from_dict", "dump_config", "parse_overrides", "with_defaults"]


class ConfigError(SdLoraError):
    """All problems of one config, one per line."""

    def __init__(self, problems: list[str], source: str):
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s) in {source}:\n" + "\n".join(f"  - {p}" for p in problems))


def parse_overrides(items: list[str]) -> dict:
    """['train.max_steps=10', 'data.dir=x'] -> nested dict; values parse as TOML, else as plain strings."""
    tree: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or "." not in key:
            raise SdLoraError(f"--set {item!r}: expected section.key=value, e.g. --set train.max_steps=100")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        node = tree
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "table"
    return {type(None): "none", str: "string", int: "integer", float: "number", bool: "true/false"}.get(tp, str(tp))


def _fold(name: str) -> str:
    """A choice as spelled in any case, with or without '_', '-' or spaces."""
    return re.sub(r"[\s_-]", "", name.lower())


def _convert(value: Any, tp, where: str, problems: list[str], base_dir: Path | None, is_path: bool):
    """Check `value` against type `tp`; return the converted value (or None after recording a problem)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            trial: list[str] = []
            out = _convert(value, arg, where, trial, base_dir, is_path)
            if not trial:
                return out
        problems.append(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return None
    if origin is Literal:
        folded = [a for a in typing.get_args(tp) if isinstance(value, str) and isinstance(a, str)
                  and _fold(a) == _fold(value)]
        if value not in typing.get_args(tp) and len(folded) == 1:
            return folded[0]  # kohya and the GUIs write 'AdamW8bit', 'BF16', 'AdamWScheduleFree'
        if value not in typing.get_args(tp):
            close = difflib.get_close_matches(str(value), [str(a) for a in typing.get_args(tp)], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{where}: must be one of {_type_name(tp)}, got {value!r}{hint}")
        return value
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{where}: expected {_type_name(tp)}, got {value!r}")
            return None
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{where}[{i}]", problems, base_dir, is_path) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a table, got {value!r}")
            return None
        return _build(tp, value, where, problems, base_dir)
    ok = (isinstance(value, tp) and not (tp is int and isinstance(value, bool))) or \
        (tp is float and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        problems.append(f"{where}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
        return None
    if tp is float:
        value = float(value)
    if is_path and tp is str and value and base_dir is not None and not value.startswith("builtin:"):
        candidate = Path(value).expanduser()
        # model.pretrained (path="model") may be a hub id such as org/name: a path only if it looks like one
        looks = looks_like_path(value, base_dir) if is_path == "model" else \
            value.startswith(".") or (base_dir / candidate).exists() or "/" in value
        if value.startswith("~") and candidate.is_absolute():  # never a folder literally named '~'
            value = str(candidate)
        elif not candidate.is_absolute() and looks:
            value = str((base_dir / candidate).resolve())
    return value


def _build(cls, data: dict, where: str, problems: list[str], base_dir: Path | None):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    start = len(problems)
    for key, value in data.items():
        name = f"{where}.{key}" if where else key
        if key not in fields:
            from sd_lora.config.kohya.names import unknown_key_hint

            close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
            hint = unknown_key_hint(key, where) or \
                (f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(fields)}")
            problems.append(f"{name}: unknown key{hint}")
            continue
        before = len(problems)
        converted = _convert(value, hints[key], name, problems, base_dir, fields[key].metadata.get("path", False))
        if len(problems) == before:
            kwargs[key] = converted
    obj = cls(**kwargs)  # keys with a problem keep their defaults, so the section's own rules still run
    if hasattr(obj, "validate"):
        reported = {p.split(":", 1)[0] for p in problems[start:]}
        problems.extend(p for p in obj.validate() if p.split(":", 1)[0] not in reported)
    return obj


def config_from_dict(data: dict, source: str = "config", base_dir: Path | None = None,
                     overrides: dict | None = None) -> Config:
    """Build and validate a Config. TOML paths resolve against `base_dir`; override paths against the CWD."""
    problems: list[str] = []
    cfg = _build(Config, data, "", problems, base_dir)
    if overrides:
        from_file = list(problems)
        merged = _build(Config, _merge(dump_dict(cfg) if not problems else data, overrides), "", problems, Path.cwd())
        cfg = merged
        given = _dotted_keys(overrides)
        problems = from_file + [p if p in from_file else _from_set(p, given) for p in problems[len(from_file):]]
        if problems and source != "the command-line overrides" and all(p.endswith("(given with --set)")
                                                                       for p in problems):
            source = "the command-line overrides (--set), not the config file"
    if not problems and cfg.data.config:
        from sd_lora.config.kohya.apply import with_dataset_config

        cfg = _build(Config, with_dataset_config(dump_dict(cfg), problems), "", problems, None)
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)), source)
    cfg.given = _given_keys(data) | _given_keys(overrides or {})
    return cfg


def _given_keys(data: dict) -> set[str]:
    return {f"{section}.{key}" for section, values in data.items() if isinstance(values, dict) for key in values}


def with_defaults(cfg: Config, values: dict[str, dict]) -> Config:
    """`cfg` with `values` ({section: {key: value}}) for the keys the user did not give (e.g. the model's native
    resolution), validated again; keys the user gave are kept."""
    given = getattr(cfg, "given", set())
    extra = {s: {k: v for k, v in kv.items() if f"{s}.{k}" not in given} for s, kv in values.items()}
    extra = {s: kv for s, kv in extra.items() if kv}
    if not extra:
        return cfg
    problems: list[str] = []
    out = _build(Config, _merge(dump_dict(cfg), extra), "", problems, Path.cwd())
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)), "the model's defaults")
    out.given = given
    return out


def _dotted_keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in tree.items():
        keys |= _dotted_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
    return keys


def _from_set(problem: str, given: set[str]) -> str:
    """`problem`, marked when the key it names came from --set (so the user looks there, not in the file)."""
    key = problem.split(":", 1)[0].split("[", 1)[0].strip()
    return f"{problem} (given with --set)" if key in given else problem


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Load `path` (None: defaults only), apply `--set` overrides, validate everything."""
    data: dict = {}
    base_dir = Path.cwd()
    source = "the command-line overrides"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise SdLoraError(f"config file {str(path)!r} not found; pass --config with the path of a TOML file "
                              "(examples in train_configs/)")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            kind = {".json": "JSON", ".yaml": "YAML", ".yml": "YAML"}.get(path.suffix.lower())
            seems = f" (it looks like {kind})" if kind else ""
            raise SdLoraError(f"config file {path}: not valid TOML{seems}: {e}; a config must be a TOML file "
                              "(sections like [train], key = value lines; examples in train_configs/)") from e
        base_dir, source = path.resolve().parent, str(path)
    return config_from_dict(data, source, base_dir, parse_overrides(list(overrides)) or None)


def dump_dict(obj) -> dict:
    return {k: v for k, v in dataclasses.asdict(obj).items()}


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(v)


def dump_config(cfg: Config) -> str:
    """The fully resolved config as TOML (None values are omitted: they mean 'auto')."""
    lines: list[str] = []
    for section, values in dump_dict(cfg).items():
        tables = {k: v for k, v in values.items() if isinstance(v, list) and v and isinstance(v[0], dict)}
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None and k not in tables]
        for key, items in tables.items():
            for item in items:
                lines.append(f"\n[[{section}.{key}]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in item.items() if v is not None]
        lines.append("")
    return "\n".join(lines)
