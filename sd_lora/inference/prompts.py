"""Prompt text: AUTOMATIC1111 `<lora:NAME:WEIGHT>` tags, prompt files (plain lines or JSONL), seed lists."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from sd_lora.errors import SdLoraError

__all__ = ["LoraRef", "PromptSpec", "parse_prompt", "parse_lora_arg", "parse_loras_field", "read_prompt_file",
           "parse_seeds"]

# `<lora:NAME>` or `<lora:NAME:WEIGHT>`; A1111 also allows `<lyco:...>` for LyCORIS files.
_TAG = re.compile(r"<(?:lora|lyco):([^:>]+)(?::([^:>]*))?(?::[^>]*)?>", re.IGNORECASE)
_PROMPT_FIELDS = {"prompt", "negative_prompt", "seed", "steps", "guidance", "width", "height", "loras"}


@dataclass(frozen=True)
class LoraRef:
    """An adapter named by the user (registered name, file name in the LoRA folder, or path) and its weight."""

    name: str
    weight: float = 1.0


@dataclass
class PromptSpec:
    """One line of a prompt file; None means "use the command-line value"."""

    prompt: str
    negative_prompt: str | None = None
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    width: int | None = None
    height: int | None = None
    loras: list[LoraRef] = field(default_factory=list)


def _weight(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise SdLoraError(f"{where}: LoRA weight {text!r} is not a number; write e.g. <lora:style:0.7>") from None


def parse_prompt(text: str) -> tuple[str, list[LoraRef]]:
    """Strip `<lora:NAME:WEIGHT>` tags from a prompt; a missing weight means 1.0.

    Returns the cleaned prompt (tags removed, spaces and commas tidied) and the tags in order.
    """
    refs = []
    for m in _TAG.finditer(text):
        weight = m.group(2)
        refs.append(LoraRef(m.group(1).strip(), 1.0 if weight in (None, "") else _weight(weight, f"prompt {text!r}")))
    clean = _TAG.sub("", text)
    clean = re.sub(r"\s*,(\s*,)+", ",", clean)
    clean = re.sub(r"\s{2,}", " ", clean).strip().strip(",").strip()
    return clean, refs


def parse_lora_arg(text: str) -> LoraRef:
    """`FILE[:SCALE]`; a trailing `:number` is the scale (so `C:\\x.safetensors` still works)."""
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            return LoraRef(head, float(tail))
        except ValueError:
            pass
    return LoraRef(text, 1.0)


def parse_loras_field(value, where: str) -> list[LoraRef]:
    """JSONL `loras`: ["name:0.5", ...], [{"name": ..., "weight": ...}, ...] or {"name": weight, ...}."""
    if isinstance(value, dict):
        return [LoraRef(str(k), _weight(str(v), where)) for k, v in value.items()]
    if not isinstance(value, list):
        raise SdLoraError(f"{where}: 'loras' must be a list or an object, got {type(value).__name__}")
    refs = []
    for item in value:
        if isinstance(item, str):
            refs.append(parse_lora_arg(item))
        elif isinstance(item, dict) and "name" in item:
            refs.append(LoraRef(str(item["name"]), _weight(str(item.get("weight", 1.0)), where)))
        else:
            raise SdLoraError(f"{where}: each 'loras' entry is \"name:weight\" or {{\"name\": ..., \"weight\": ...}}; "
                              f"got {item!r}")
    return refs


def _jsonl_spec(line: str, where: str) -> PromptSpec:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise SdLoraError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
        raise SdLoraError(f"{where}: each JSONL line is an object with a string 'prompt'")
    unknown = sorted(set(row) - _PROMPT_FIELDS)
    if unknown:
        raise SdLoraError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(_PROMPT_FIELDS)}")
    loras = parse_loras_field(row["loras"], where) if "loras" in row else []
    try:
        return PromptSpec(row["prompt"], row.get("negative_prompt"),
                          *(None if row.get(k) is None else t(row[k]) for k, t in
                            (("seed", int), ("steps", int), ("guidance", float), ("width", int), ("height", int))),
                          loras=loras)
    except (TypeError, ValueError) as e:
        raise SdLoraError(f"{where}: bad value ({e})") from None


def read_prompt_file(path: str | Path) -> list[PromptSpec]:
    """Plain text (one prompt a line) or JSONL (`.jsonl`, or every line starting with `{`). Blank lines and
    lines starting with `#` are skipped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise SdLoraError(f"--prompt-file: cannot read {path}: {e}") from None
    numbered = [(i + 1, ln.strip()) for i, ln in enumerate(lines) if ln.strip() and not ln.strip().startswith("#")]
    if not numbered:
        raise SdLoraError(f"--prompt-file: {path} holds no prompts")
    jsonl = path.suffix == ".jsonl" or all(ln.startswith("{") for _, ln in numbered)
    if jsonl:
        return [_jsonl_spec(ln, f"{path}:{n}") for n, ln in numbered]
    return [PromptSpec(ln) for _, ln in numbered]


def parse_seeds(text: str) -> list[int]:
    """`42`, `1-4` (inclusive) or `1,5,9` (items may be ranges)."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            lo, sep, hi = part.partition("-") if not part.startswith("-") else (part, "", "")
            if sep:
                start, stop = int(lo), int(hi)
                if stop < start:
                    raise ValueError
                seeds.extend(range(start, stop + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise SdLoraError(f"--seed: {text!r} is not a seed, a range like 1-4, or a list like 1,5,9") from None
    return seeds
