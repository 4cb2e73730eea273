"""kohya sd-scripts `--dataset_config` files (`[general]`, `[[datasets]]`, `[[datasets.subsets]]`) -> the keys
of sd-lora's `[data]` section (and `train.batch_size`).

As in kohya, a subset key is looked up in the subset, then its dataset, then `[general]`. Every kohya key
either maps to one sd-lora setting, is refused with why and what to use instead, or (only keys that change
nothing sd-lora trains) is listed as ignored. All problems of a file are reported together.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from sd_lora.errors import SdLoraError

__all__ = ["DatasetTranslation", "DatasetConfigError", "DATASET_KEYS", "read_dataset_config",
           "translate_dataset_config"]


class DatasetConfigError(SdLoraError):
    """Every problem of one kohya dataset config, one per line."""

    def __init__(self, problems: list[str], source: str):
        self.problems, self.source = problems, source
        super().__init__(f"kohya dataset config {source}: {len(problems)} problem(s):\n"
                         + "\n".join(f"  - {p}" for p in problems))

_ANY = ("general", "datasets", "subsets")  # kohya's "ascendable" keys
_DATASET = ("general", "datasets")
_SUBSET = ("subsets",)


@dataclass(frozen=True)
class Key:
    kind: type | tuple  # the TOML type(s) kohya accepts
    levels: tuple[str, ...]
    target: str | None  # "subset.x", "data.x" or "train.x"; None: refused (when `refuse` says so) or ignored
    refuse: Callable[[Any], str | None] | None = None  # the reason this value cannot be honoured, or None
    ignored: str | None = None  # why the key changes nothing here


def _when(test: Callable[[Any], bool], reason: str) -> Callable[[Any], str | None]:
    return lambda value: reason if test(value) else None


_NUM = (int, float)
DATASET_KEYS: dict[str, Key] = {
    # subset keys, also allowed in [[datasets]] and [general]
    "num_repeats": Key(int, _ANY, "subset.num_repeats"),
    "flip_aug": Key(bool, _ANY, "subset.flip_aug"),
    "random_crop": Key(bool, _ANY, "subset.random_crop"),
    "shuffle_caption": Key(bool, _ANY, "subset.shuffle_caption"),
    "keep_tokens": Key(int, _ANY, "subset.keep_tokens"),
    "keep_tokens_separator": Key(str, _ANY, "subset.keep_tokens_separator"),
    "caption_extension": Key(str, _ANY, "subset.caption_extension"),
    "class_tokens": Key(str, _ANY, "subset.class_tokens"),
    "caption_dropout_rate": Key(_NUM, _ANY, "subset.caption_dropout_rate"),
    "caption_tag_dropout_rate": Key(_NUM, _ANY, "subset.caption_tag_dropout_rate"),
    "color_aug": Key(bool, _ANY, None, _when(bool, (
        "not supported: sd-lora has no colour augmentation (kohya's random hue shift also rules out cached "
        "latents); remove it or set it to false"))),
    "face_crop_aug_range": Key(list, _ANY, None, _when(lambda v: True, (
        "not supported: sd-lora does not locate faces; crop the images around the faces beforehand and remove "
        "this key"))),
    "caption_prefix": Key(str, _ANY, None, _when(bool, (
        "not supported: write the text into the caption files, or use data.trigger_word (put in front of the "
        "training captions only, joined with ', ')"))),
    "caption_suffix": Key(str, _ANY, None, _when(bool, (
        "not supported: append the text to the caption files"))),
    "caption_separator": Key(str, _ANY, None, _when(lambda v: v != ",", (
        "not supported: sd-lora splits tags at ','; rewrite the captions with ',' between tags"))),
    "secondary_separator": Key(str, _ANY, None, _when(bool, (
        "not supported: sd-lora shuffles and drops tags split at ',' only; join such tag groups without a "
        "separator in the captions"))),
    "enable_wildcard": Key(bool, _ANY, None, _when(bool, (
        "not supported: sd-lora reads a caption file as one caption (its lines are joined); keep one caption per "
        "image"))),
    "token_warmup_min": Key(int, _ANY, None, ignored="only acts with token_warmup_step, which is not supported"),
    "token_warmup_step": Key(_NUM, _ANY, None, _when(lambda v: v > 0, (
        "not supported: sd-lora has no caption token warm-up; remove token_warmup_step"))),
    "caption_dropout_every_n_epochs": Key(int, _ANY, None, _when(lambda v: v > 0, (
        "not supported: use caption_dropout_rate (a share of the steps instead of whole epochs)"))),
    "custom_attributes": Key(dict, _ANY, None, _when(bool, (
        "not supported: custom attributes only feed kohya's own architectures"))),
    "resize_interpolation": Key(str, _ANY, None, _when(lambda v: v.lower() != "lanczos", (
        "not supported: sd-lora always resizes with Lanczos; remove the key"))),
    "cache_info": Key(bool, _ANY, None, ignored="sd-lora reads image sizes itself; the key has no effect"),
    # subset-only keys
    "image_dir": Key(str, _SUBSET, "subset.dir"),
    "is_reg": Key(bool, _SUBSET, "subset.is_reg"),
    "metadata_file": Key(str, _SUBSET, "subset.metadata_file"),
    "alpha_mask": Key(bool, _SUBSET, "data.alpha_mask"),
    "conditioning_data_dir": Key(str, _SUBSET, None, _when(lambda v: True, (
        "not supported: ControlNet datasets (conditioning images) are not trained by sd-lora; a LoRA dataset "
        "needs only image_dir"))),
    # dataset keys, also allowed in [general]
    "batch_size": Key(int, _DATASET, "train.batch_size"),
    "resolution": Key((int, list), _DATASET, "data.resolution"),
    "enable_bucket": Key(bool, _DATASET, "data.enable_bucket"),
    "min_bucket_reso": Key(int, _DATASET, "data.min_bucket_reso"),
    "max_bucket_reso": Key(int, _DATASET, "data.max_bucket_reso"),
    "bucket_reso_steps": Key(int, _DATASET, "data.bucket_reso_steps"),
    "bucket_no_upscale": Key(bool, _DATASET, "data.bucket_no_upscale"),
    "validation_split": Key(_NUM, _DATASET, "data.validation_split"),
    "validation_seed": Key(int, _DATASET, None, ignored="sd-lora picks the held-out images with train.seed"),
    "network_multiplier": Key(_NUM, _DATASET, None, _when(lambda v: v != 1, (
        "not supported: every dataset trains the network at full strength in sd-lora"))),
}


@dataclass
class DatasetTranslation:
    """sd-lora config keys from one kohya dataset config, and the kohya keys that change nothing here."""

    data: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)


def read_dataset_config(path: str | Path) -> DatasetTranslation:
    """Read a kohya dataset config (TOML, or JSON as kohya also accepts) and translate it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise SdLoraError(f"kohya dataset config {str(path)!r}: cannot read it ({e.strerror or e}); check the path") \
            from None
    except UnicodeDecodeError:
        raise SdLoraError(f"kohya dataset config {path}: not UTF-8 text; re-save it as UTF-8") from None
    try:
        tree = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise SdLoraError(f"kohya dataset config {path}: not valid {path.suffix.lstrip('.').upper() or 'TOML'}: "
                          f"{e}") from None
    return translate_dataset_config(tree, str(path), path.resolve().parent)


def _type_ok(value, kind) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return any(isinstance(value, k) and not (k in (int, float) and isinstance(value, bool)) for k in kinds)


def _read_level(table: dict, level: str, where: str, problems: list[str], ignored: list[str]) -> dict:
    """The keys of one table, type-checked and allowed at this level; refused values become problems."""
    import difflib

    out = {}
    for key, value in table.items():
        spec = DATASET_KEYS.get(key)
        if spec is None or level not in spec.levels:
            if spec is not None:
                allowed = " / ".join({"general": "[general]", "datasets": "[[datasets]]",
                                      "subsets": "[[datasets.subsets]]"}[lv] for lv in spec.levels)
                problems.append(f"{where}.{key}: kohya allows this key only in {allowed}")
                continue
            from sd_lora.config.kohya.names import kohya_hint

            hint = kohya_hint(key)
            close = difflib.get_close_matches(key, list(DATASET_KEYS), n=1, cutoff=0.7)
            problems.append(f"{where}.{key}: not a kohya dataset config key"
                            + (f" ({hint}; set it in the sd-lora config)" if hint else "")
                            + (f"; did you mean {close[0]!r}?" if close and not hint else ""))
            continue
        if not _type_ok(value, spec.kind):
            want = " or ".join(getattr(k, "__name__", str(k)) for k in
                               (spec.kind if isinstance(spec.kind, tuple) else (spec.kind,)))
            problems.append(f"{where}.{key}: expected {want}, got {value!r}")
            continue
        reason = spec.refuse(value) if spec.refuse else None
        if reason:
            problems.append(f"{where}.{key} = {value!r}: {reason}")
        elif spec.ignored:
            ignored.append(f"{where}.{key}: ignored ({spec.ignored})")
        elif spec.target:
            out[key] = value
    return out


def _resolution(value, where: str, problems: list[str]) -> int | None:
    if isinstance(value, list):
        if len(value) != 2 or not all(_type_ok(v, int) for v in value):
            problems.append(f"{where}.resolution: expected a number or [width, height], got {value!r}")
            return None
        if value[0] != value[1]:
            problems.append(f"{where}.resolution = {value!r}: not supported: sd-lora trains a square resolution "
                            "(with enable_bucket, resolution² is the pixel budget of every bucket); use one number")
            return None
        value = value[0]
    return value


def translate_dataset_config(tree: dict, source: str, base_dir: Path) -> DatasetTranslation:
    """kohya's dataset-config tree -> sd-lora keys; relative image_dir / metadata_file paths resolve against
    `base_dir` (the dataset config's folder)."""
    problems: list[str] = []
    ignored: list[str] = []
    for key in tree:
        if key not in ("general", "datasets"):
            problems.append(f"{key}: not a kohya dataset config table; the file has [general] and [[datasets]] "
                            "(with [[datasets.subsets]])")
    general = tree.get("general", {})
    datasets = tree.get("datasets", [])
    if not isinstance(general, dict) or not isinstance(datasets, list) or \
            not all(isinstance(d, dict) for d in datasets):
        raise SdLoraError(f"kohya dataset config {source}: [general] must be a table and [[datasets]] an array of "
                          "tables")
    if not datasets:
        problems.append("datasets: the file defines no [[datasets]]; add one with its [[datasets.subsets]]")
    elif len(datasets) > 1:
        problems.append(f"datasets: {len(datasets)} [[datasets]] tables: sd-lora trains one dataset (one "
                        "resolution and batch size), and kohya counts batches per dataset, so merging them would "
                        "change the step count; put all subsets in one [[datasets]] table")
    top = _read_level(general, "general", "general", problems, ignored)
    out = DatasetTranslation(ignored=ignored)
    if len(datasets) == 1:
        dataset = datasets[0]
        subsets = dataset.get("subsets", [])
        if not isinstance(subsets, list) or not subsets or not all(isinstance(s, dict) for s in subsets):
            problems.append("datasets[0].subsets: each dataset needs at least one [[datasets.subsets]] table with "
                            "an image_dir")
            subsets = []
        own = _read_level({k: v for k, v in dataset.items() if k != "subsets"}, "datasets", "datasets[0]",
                          problems, ignored)
        merged_dataset = {**top, **own}
        _dataset_keys(merged_dataset, out, problems)
        _subsets(subsets, merged_dataset, out, problems, ignored, base_dir)
    if problems:
        raise DatasetConfigError(problems, source)
    return out


def _dataset_keys(values: dict, out: DatasetTranslation, problems: list[str]) -> None:
    for key, value in values.items():
        target = DATASET_KEYS[key].target
        if not target.startswith(("data.", "train.")) or target == "data.alpha_mask":
            continue
        if key == "resolution":
            value = _resolution(value, "datasets[0]", problems)
            if value is None:
                continue
        section, name = target.split(".", 1)
        getattr(out, section)[name] = value


def _subsets(subsets: list[dict], inherited: dict, out: DatasetTranslation, problems: list[str],
             ignored: list[str], base_dir: Path) -> None:
    mapped, seen, alpha = [], set(), set()
    for i, table in enumerate(subsets):
        where = f"datasets[0].subsets[{i}]"
        own = _read_level(table, "subsets", where, problems, ignored)
        values = {k: v for k, v in inherited.items() if DATASET_KEYS[k].target.startswith("subset.")} | own
        if "image_dir" not in values and "metadata_file" not in values:
            problems.append(f"{where}: needs image_dir (a folder of images) or metadata_file (kohya's fine-tuning "
                            "JSON)")
            continue
        if values.get("num_repeats", 1) < 1:
            ignored.append(f"{where}: skipped, as kohya skips it (num_repeats = {values['num_repeats']})")
            continue
        identity = values.get("metadata_file") or values.get("image_dir")
        if identity in seen:
            ignored.append(f"{where}: skipped, as kohya skips it (the same {identity!r} as an earlier subset)")
            continue
        seen.add(identity)
        if "metadata_file" not in values:
            values.setdefault("caption_extension", ".caption")  # kohya's default, not sd-lora's .txt
        alpha.add(bool(values.pop("alpha_mask", False)))
        subset = {DATASET_KEYS[k].target.split(".", 1)[1]: v for k, v in values.items()}
        for key in ("dir", "metadata_file"):
            if key in subset:
                subset[key] = str((base_dir / Path(subset[key]).expanduser()).resolve())
        if "dir" not in subset:  # kohya finds fine-tuning images through the paths in the metadata file
            subset["dir"] = str(Path(subset["metadata_file"]).parent)
        mapped.append(subset)
    if len(alpha) > 1:
        problems.append("datasets[0].subsets: alpha_mask differs between subsets; sd-lora applies data.alpha_mask "
                        "to every image (images without alpha count fully), so set it the same in every subset")
    elif alpha == {True}:
        out.data["alpha_mask"] = True
    out.data["subsets"] = mapped
