"""Prompt text: AUTOMATIC1111 `<lora:NAME:WEIGHT>` tags, prompt files (plain lines or JSONL), seed lists."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from sd_lora.errors import SdLoraError

__all__ = ["LoraRef", "PromptSpec", "MAX_WEIGHT", "SEED_MAX", "check_weight", "check_seed", "parse_prompt",
           "parse_lora_arg", "parse_loras_field", "read_prompt_file", "parse_seed_ranges", "parse_seeds"]

# An opening `<lora:` / `<lyco:` (A1111 also allows `<lyco:...>` for LyCORIS files); everything up to the next
# `>` is the tag: `NAME[:TE_WEIGHT[:UNET_WEIGHT]]`, weights also as `te=W` / `unet=W`.
_OPEN = re.compile(r"<(?:lora|lyco):", re.IGNORECASE)
MAX_WEIGHT = 100.0  # |weight| above this is a typo (A1111 users write 0.1 ... 2); it would only burn the image
SEED_MAX = 2 ** 64 - 1  # torch generators take seeds up to 2**64 - 1
_PROMPT_FIELDS = {"prompt", "negative_prompt", "seed", "steps", "guidance", "width", "height", "loras"}


@dataclass(frozen=True)
class LoraRef:
    """An adapter named by the user (registered name, file name in the LoRA folder, or path) and its weight."""

    name: str
    weight: float = 1.0  # text encoders, and the UNet unless unet_weight is set (AUTOMATIC1111's te multiplier)
    unet_weight: float | None = None  # AUTOMATIC1111's unet multiplier: <lora:NAME:TE:UNET> or unet=W

    @property
    def unet(self) -> float:
        return self.weight if self.unet_weight is None else self.unet_weight


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


def check_weight(value: float, where: str) -> float:
    """A LoRA weight must be a finite number of at most MAX_WEIGHT in size."""
    if not math.isfinite(value) or abs(value) > MAX_WEIGHT:
        raise SdLoraError(f"{where}: LoRA weight {value!r} is not allowed; use a finite weight between "
                          f"-{MAX_WEIGHT:g} and {MAX_WEIGHT:g} (usually 0 ... 1.5)")
    return float(value)


def _weight(text: str, where: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise SdLoraError(f"{where}: LoRA weight {text!r} is not a number; write e.g. <lora:style:0.7>") from None
    return check_weight(value, where)


def _tag(body: str, where: str) -> LoraRef:
    """`NAME[:TE[:UNET]]` with `te=` / `unet=` keywords, as AUTOMATIC1111 reads it."""
    name, *fields = body.split(":")
    if not name.strip():
        raise SdLoraError(f"{where}: the tag has no LoRA name; write <lora:NAME> or <lora:NAME:WEIGHT>")
    positional, named = [], {}
    for item in fields:
        key, eq, value = item.partition("=")
        if eq:
            key = key.strip().lower()
            if key not in ("te", "unet"):
                extra = " (dynamic rank is not supported)" if key == "dyn" else ""
                raise SdLoraError(f"{where}: unknown keyword {key!r}{extra}; use te=WEIGHT or unet=WEIGHT")
            if key in named:
                raise SdLoraError(f"{where}: {key}= is given twice")
            named[key] = _weight(value.strip(), where)
        elif named:
            raise SdLoraError(f"{where}: a plain weight after a keyword; write <lora:NAME:TE:UNET> or "
                              "<lora:NAME:TE:unet=W>")
        elif not item.strip():
            raise SdLoraError(f"{where}: empty weight; write <lora:NAME:WEIGHT> (or leave out the ':')")
        else:
            positional.append(_weight(item.strip(), where))
    if len(positional) > 2:
        raise SdLoraError(f"{where}: too many weights ({len(positional)}); write <lora:NAME:WEIGHT> or "
                          "<lora:NAME:TE_WEIGHT:UNET_WEIGHT> (dynamic rank is not supported)")
    te = named.get("te", positional[0] if positional else 1.0)
    unet = named.get("unet", positional[1] if len(positional) > 1 else None)
    return LoraRef(name.strip(), te, None if unet is None or unet == te else unet)


def parse_prompt(text: str) -> tuple[str, list[LoraRef]]:
    """Strip `<lora:NAME:WEIGHT>` tags from a prompt; a missing weight means 1.0.

    `<lora:NAME:TE:UNET>` (and `te=` / `unet=` keywords) set the text-encoder and UNet weights apart, as in
    AUTOMATIC1111. A malformed tag (no name, an empty or non-numeric weight, no closing `>`) is an error,
    never text left in the prompt. Returns the cleaned prompt (tags removed, spaces and commas tidied) and
    the tags in order.
    """
    refs, pieces, pos = [], [], 0
    for m in _OPEN.finditer(text):
        if m.start() < pos:
            continue
        close = text.find(">", m.end())
        nested = text.find("<", m.end())
        if close < 0 or 0 <= nested < close:
            shown = text[m.start():(nested if 0 <= nested < close or close < 0 and nested >= 0 else len(text))]
            raise SdLoraError(f"prompt {text!r}: the tag {shown.strip()!r} is not closed; end it with '>', e.g. "
                              "<lora:style:0.7>")
        tag = text[m.start():close + 1]
        refs.append(_tag(text[m.end():close], f"prompt {text!r}, tag {tag}"))
        pieces.append(text[pos:m.start()])
        pos = close + 1
    clean = "".join(pieces) + text[pos:]
    clean = re.sub(r"\s*,(\s*,)+", ",", clean)
    clean = re.sub(r"\s{2,}", " ", clean).strip().strip(",").strip()
    return clean, refs


def parse_lora_arg(text: str) -> LoraRef:
    """`FILE[:SCALE]`; a trailing `:number` is the scale (so `C:\\x.safetensors` still works)."""
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            value = float(tail)
        except ValueError:
            pass
        else:
            return LoraRef(head, check_weight(value, f"--lora {text!r}"))
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
    if isinstance(row.get("seed"), int) and not isinstance(row["seed"], bool):
        check_seed(row["seed"], where)
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
        raw = path.read_bytes()
    except OSError as e:
        raise SdLoraError(f"--prompt-file: cannot read {path}: {e.strerror or e}; check the path") from None
    lines = []
    for number, blob in enumerate(raw.removeprefix(b"\xef\xbb\xbf").splitlines(), start=1):
        try:
            lines.append(blob.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise SdLoraError(f"--prompt-file {path}:{number}: not UTF-8 text (byte 0x{blob[e.start]:02x} at "
                              f"column {e.start + 1}); re-save the file as UTF-8") from None
    numbered = [(i + 1, ln.strip()) for i, ln in enumerate(lines) if ln.strip() and not ln.strip().startswith("#")]
    if not numbered:
        raise SdLoraError(f"--prompt-file: {path} holds no prompts")
    jsonl = path.suffix == ".jsonl" or all(ln.startswith("{") for _, ln in numbered)
    if jsonl:
        return [_jsonl_spec(ln, f"{path}:{n}") for n, ln in numbered]
    return [_plain_spec(ln, f"{path}:{n}") for n, ln in numbered]


# kohya's sample-prompt options after the prompt: --n negative, --w width, --h height, --d seed, --s steps, --l CFG
_INLINE = {"n": ("negative_prompt", str), "w": ("width", int), "h": ("height", int), "d": ("seed", int),
           "s": ("steps", int), "l": ("guidance", float)}


def _plain_spec(line: str, where: str) -> PromptSpec:
    """A plain prompt line, with kohya's ` --d 42 --s 20 ...` options (never left in the prompt text)."""
    prompt, *options = line.split(" --")
    values: dict = {}
    for option in options:
        letter, _, value = option.strip().partition(" ")
        if letter not in _INLINE:
            raise SdLoraError(f"{where}: unknown option '--{letter}' after the prompt; a prompt line takes "
                              "--n NEGATIVE, --w WIDTH, --h HEIGHT, --d SEED, --s STEPS, --l GUIDANCE (kohya's)")
        name, kind = _INLINE[letter]
        try:
            values[name] = kind(value.strip())
        except ValueError:
            raise SdLoraError(f"{where}: '--{letter} {value.strip()}': {name} must be "
                              f"{'a whole number' if kind is int else 'a number' if kind is float else 'text'}") from None
    if "seed" in values:
        check_seed(values["seed"], where)
    return PromptSpec(prompt.strip(), values.get("negative_prompt"), values.get("seed"), values.get("steps"),
                      values.get("guidance"), values.get("width"), values.get("height"))


def check_seed(seed: int, where: str = "--seed") -> int:
    if not 0 <= seed <= SEED_MAX:
        raise SdLoraError(f"{where}: seed {seed} is out of range; seeds are whole numbers from 0 to {SEED_MAX}")
    return seed


def parse_seed_ranges(text: str) -> list[range]:
    """`42`, `1-4` (inclusive) or `1,5,9` (items may be ranges) as ranges, never expanded: `1-100000000`
    costs nothing until it is iterated."""
    ranges: list[range] = []
    for part in text.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            start, stop = (int(lo), int(hi)) if sep and lo.strip() else (int(part), int(part))
        except ValueError:
            raise SdLoraError(f"--seed: {text!r} is not a seed, a range like 1-4, or a list like 1,5,9 (seeds are "
                              f"whole numbers from 0 to {SEED_MAX})") from None
        check_seed(start, f"--seed {text!r}")
        check_seed(stop, f"--seed {text!r}")
        if stop < start:
            raise SdLoraError(f"--seed: range {part!r} runs backwards; write it low-high, e.g. {stop}-{start}")
        ranges.append(range(start, stop + 1))
    return ranges


def parse_seeds(text: str) -> list[int]:
    """`42`, `1-4` (inclusive) or `1,5,9` (items may be ranges), expanded to a list (see parse_seed_ranges
    for long ranges)."""
    return [seed for r in parse_seed_ranges(text) for seed in r]
