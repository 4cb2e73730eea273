"""Which folders make up the dataset: data.dir (flat or kohya repeat folders), [[data.subsets]], the
regularisation folder and the validation folder, each with its settings resolved against `[data]`."""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path

from sd_lora.config.data import SUBSET_INHERITED, DataConfig, SubsetConfig
from sd_lora.data.captions import CaptionSettings
from sd_lora.data.images import IMAGE_EXTENSIONS
from sd_lora.errors import SdLoraError

__all__ = ["SubsetSpec", "resolve_subsets", "resolve_validation", "list_images"]

_REPEAT_FOLDER = re.compile(r"^(\d+)_(.+)$")


@dataclass(frozen=True)
class SubsetSpec:
    """One folder of images with every setting resolved (nothing left to inherit)."""

    dir: Path
    name: str  # shown in the plan: the concept name of a repeat folder, else the folder name
    where: str  # config key that produced it, for error messages
    num_repeats: int
    is_reg: bool
    caption_extension: str
    class_tokens: str | None
    metadata_file: Path | None
    caption: CaptionSettings
    flip_aug: bool
    random_crop: bool
    class_prompt: str | None = None
    num_class_images: int = 0


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name (case-insensitive extension match).

    Broken symbolic links with an image extension are listed too, so the scan names and skips them
    instead of dropping them silently. Raises OSError (e.g. PermissionError) when the folder cannot be read.
    """
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in IMAGE_EXTENSIONS and (p.is_file() or (p.is_symlink() and not p.exists())))


def _entries(folder: Path, where: str) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError as e:
        raise SdLoraError(f"{where} {str(folder)!r} cannot be read ({e.strerror or e}); fix its permissions "
                          "(e.g. chmod -R u+rX) or point the config at another folder") from None


def _check_folder_link(entry: Path, folder: Path, where: str) -> None:
    """A repeat-folder link that leads nowhere, in a circle, or back up to the data folder would be read as an
    empty or duplicated repeat folder without a word: one error naming it instead. Image links are the scan's (it
    names each bad one as skipped)."""
    if not entry.is_symlink() or not _REPEAT_FOLDER.match(entry.name):
        return  # other links are never read as folders of the dataset
    try:
        target = entry.resolve(strict=True)
    except (OSError, RuntimeError) as e:  # RuntimeError: a loop, before Python 3.13
        loop = isinstance(e, RuntimeError) or getattr(e, "errno", None) == errno.ELOOP
        why = "a symbolic link loop (it leads back to itself)" if loop else \
            f"a symbolic link to {os.readlink(entry)}, which does not exist"
        raise SdLoraError(f"{where} {str(folder)!r}: {entry.name!r} is {why}; fix or remove the link") from None
    if target.is_dir() and (target == folder.resolve() or target in folder.resolve().parents):
        raise SdLoraError(f"{where} {str(folder)!r}: {entry.name!r} is a link to {str(target)!r}, which holds "
                          f"{where} itself, so its images would be read again (a loop); remove the link or make it "
                          "point to a folder of its own")


def resolve_subsets(cfg: DataConfig) -> list[SubsetSpec]:
    """Training subsets (regularisation ones included), in a stable order. Raises SdLoraError on bad folders."""
    if not cfg.dir and not cfg.subsets and not cfg.reg_data_dir:
        raise SdLoraError("no training data configured: set data.dir to a folder of images with captions "
                          "(or add [[data.subsets]] tables)")
    specs: list[SubsetSpec] = []
    if cfg.dir:
        specs += _expand_dir(cfg, Path(cfg.dir), "data.dir", is_reg=False, may_be_missing=False)
    for i, sub in enumerate(cfg.subsets):
        where = f"data.subsets[{i}]"
        folder = Path(sub.dir)
        wants_generation = sub.is_reg and _num_class_images(cfg, sub) > 0
        if not folder.is_dir() and not wants_generation:
            raise SdLoraError(f"{where}.dir {str(folder)!r} does not exist or is not a folder; fix the path "
                              "(relative paths are relative to the config file)")
        specs.append(_spec(cfg, sub, folder, where, folder.name))
    if cfg.reg_data_dir:
        specs += _expand_dir(cfg, Path(cfg.reg_data_dir), "data.reg_data_dir", is_reg=True,
                             may_be_missing=cfg.num_class_images > 0)
    return specs


def resolve_validation(cfg: DataConfig) -> list[SubsetSpec]:
    """The validation folder as a subset (no repeats, no randomisation); empty when none is configured."""
    if not cfg.validation_dir:
        return []
    folder = Path(cfg.validation_dir)
    if not folder.is_dir():
        raise SdLoraError(f"data.validation_dir {str(folder)!r} does not exist or is not a folder; fix the path")
    sub = SubsetConfig(dir=str(folder))
    return [_spec(cfg, sub, folder, "data.validation_dir", folder.name)]


def _expand_dir(cfg: DataConfig, folder: Path, where: str, is_reg: bool, may_be_missing: bool) -> list[SubsetSpec]:
    """A flat folder, or kohya repeat folders '<repeats>_<name>' inside it (plus any images beside them)."""
    if not folder.is_dir():
        if may_be_missing:
            return [_spec(cfg, SubsetConfig(dir=str(folder), is_reg=is_reg), folder, where, folder.name)]
        raise SdLoraError(f"{where} {str(folder)!r} does not exist or is not a folder; set {where} to the folder "
                          "of your images (relative paths are relative to the config file)")
    entries = _entries(folder, where)
    for entry in entries:
        _check_folder_link(entry, folder, where)
    subfolders = sorted(p for p in entries if p.is_dir() and not p.name.startswith("."))
    direct = list_images(folder)
    specs = []
    if direct or not subfolders:
        repeats = cfg.num_repeats if not is_reg else 1
        specs.append(_spec(cfg, SubsetConfig(dir=str(folder), num_repeats=repeats, is_reg=is_reg),
                           folder, where, folder.name))
    if direct and not any(_REPEAT_FOLDER.match(p.name) for p in subfolders):
        return specs  # a flat folder: other subfolders (e.g. originals/) are not part of the dataset
    for sub in subfolders:
        match = _REPEAT_FOLDER.match(sub.name)
        if not match:
            prefix = sub.name.split("_", 1)[0]
            why = f"{prefix!r} is not a number of repeats" if "_" in sub.name else "it has no '<repeats>_' prefix"
            raise SdLoraError(
                f"{where} {str(folder)!r}: folder {sub.name!r} is not a kohya repeat folder ({why}); name it "
                f"'<repeats>_<name>', e.g. '10_{sub.name.split('_', 1)[-1]}', or move it out of {where}")
        repeats, concept = int(match.group(1)), match.group(2)
        if repeats < 1:
            raise SdLoraError(f"{where}: folder {sub.name!r} asks for {repeats} repeats; use at least 1")
        base = SubsetConfig(dir=str(sub), num_repeats=repeats, is_reg=is_reg, class_tokens=concept)
        specs.append(_spec(cfg, base, sub, f"{where} ({sub.name})", concept))
    return specs


def _num_class_images(cfg: DataConfig, sub: SubsetConfig) -> int:
    return sub.num_class_images if sub.num_class_images is not None else cfg.num_class_images


def _spec(cfg: DataConfig, sub: SubsetConfig, folder: Path, where: str, name: str) -> SubsetSpec:
    value = {k: getattr(sub, k) if getattr(sub, k) is not None else getattr(cfg, k) for k in SUBSET_INHERITED}
    metadata = sub.metadata_file or (cfg.metadata_file if where == "data.dir" else None)
    class_prompt = sub.class_prompt or cfg.class_prompt
    class_tokens = value["class_tokens"]
    if sub.is_reg:
        # [data].class_tokens describes the trained concept ("sks dog"), never the class images ("dog").
        class_tokens = sub.class_tokens or class_prompt
        class_prompt = class_prompt or class_tokens
    return SubsetSpec(
        dir=folder, name=name, where=where, num_repeats=sub.num_repeats, is_reg=sub.is_reg,
        caption_extension=value["caption_extension"], class_tokens=class_tokens,
        metadata_file=Path(metadata) if metadata else None,
        caption=CaptionSettings(
            keep_tokens=value["keep_tokens"], keep_tokens_separator=value["keep_tokens_separator"],
            shuffle_caption=value["shuffle_caption"], caption_dropout_rate=value["caption_dropout_rate"],
            caption_tag_dropout_rate=value["caption_tag_dropout_rate"],
            trigger_word=None if sub.is_reg else cfg.trigger_word),
        flip_aug=value["flip_aug"], random_crop=value["random_crop"],
        class_prompt=class_prompt if sub.is_reg else None,
        num_class_images=_num_class_images(cfg, sub) if sub.is_reg else 0,
    )
