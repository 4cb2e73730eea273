"""Regenerate training samples from their recorded recipes, and the generation defaults an adapter records.

A training run records each sample's full recipe (prompt, negative, seed, steps, sampler, guidance and its
rescale, zero-terminal SNR, size, clip skip, LoRA scale, dtype, base model and its hash) in the adapter's
metadata (`sd_lora.samples`) and in each sample PNG (`sd-lora-recipe` text chunk).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from sd_lora.errors import SdLoraError
from sd_lora.formats.safetensors_io import metadata_json

__all__ = ["read_recipes", "recipe_request", "adapter_defaults"]

SAMPLES_KEY = "sd_lora.samples"
RECIPE_CHUNK = "sd-lora-recipe"


def _metadata(path: Path, option: str = "--recipe") -> dict[str, str]:
    """The file's metadata; `option` is what the user gave the path with (the error names it)."""
    from sd_lora.formats.safetensors_io import read_header

    try:
        return read_header(path)[1]
    except SdLoraError as e:  # not a safetensors file, or damaged: the header checks say which
        raise SdLoraError(f"{option} {path}: not a readable .safetensors adapter "
                          f"({str(e).removeprefix(f'{path}: ')})") from None
    except OSError as e:
        raise SdLoraError(f"{option} {path}: cannot be read ({e.strerror or e})") from None


def read_recipes(path: str | Path) -> list[tuple[dict, Path]]:
    """(record, adapter file) for every sample an adapter records, or for the one sample a PNG records."""
    path = Path(path)
    if not path.is_file():
        raise SdLoraError(f"--recipe {path}: no such file; give an adapter .safetensors or a training sample .png")
    if path.suffix.lower() == ".png":
        from PIL import Image

        with Image.open(path) as im:
            text = im.text.get(RECIPE_CHUNK)
        if not text:
            raise SdLoraError(f"--recipe {path}: the image records no sd-lora training recipe (only training "
                              "samples in output.dir/samples/step-NNNNNN/ do)")
        record = metadata_json(text, f"--recipe {path}: its {RECIPE_CHUNK} record")
        # samples live in {output.dir}/samples/step-NNNNNN/NN.png, the adapter in {output.dir}
        adapter = path.resolve().parents[2] / record["adapter"]
        if not adapter.is_file():
            raise SdLoraError(f"--recipe {path}: the adapter {record['adapter']} it was rendered with is not at "
                              f"{adapter}; put it there (it is written at step {record['step']})")
        return [(record, adapter)]
    text = _metadata(path).get(SAMPLES_KEY)
    if not text:
        raise SdLoraError(f"--recipe {path}: the adapter records no training samples (trained without "
                          "sample.every_n_steps, or not by sd-lora)")
    records = metadata_json(text, f"--recipe {path}: metadata {SAMPLES_KEY!r}", list)
    bad = [r for r in records if not isinstance(r, dict)]
    if bad:
        raise SdLoraError(f"--recipe {path}: metadata {SAMPLES_KEY!r} holds {type(bad[0]).__name__} entries instead "
                          "of sample records; the file is damaged or was not written by sd-lora")
    return [(record, path) for record in records]


def recipe_request(record: dict, adapter: Path):
    from sd_lora.inference import GenerationRequest

    return GenerationRequest(prompt=record["prompt"], negative_prompt=record["negative_prompt"], seed=record["seed"],
                             steps=record["steps"], guidance=record["guidance"], width=record["width"],
                             height=record["height"], clip_skip=record["clip_skip"],
                             guidance_rescale=record["guidance_rescale"], loras=[(str(adapter), record["scale"])])


def adapter_defaults(files: list[Path], option: str = "--lora") -> dict:
    """clip_skip, zero_terminal_snr, guidance_rescale and resolution the first sd-lora-trained adapter among `files`
    records (empty when none does)."""
    for file in files:
        if not (file.is_file() and file.suffix == ".safetensors"):
            continue
        meta = _metadata(file, option)
        if "sd_lora.inference_recipe" not in meta and "ss_clip_skip" not in meta:
            continue
        where = f"{option} {file}: metadata"
        recipe = metadata_json(meta.get("sd_lora.inference_recipe", "{}"), f"{where} 'sd_lora.inference_recipe'")
        out = {"zero_terminal_snr": bool(recipe.get("zero_terminal_snr")) or meta.get("ss_zero_terminal_snr") == "True",
               "guidance_rescale": _number(recipe.get("guidance_rescale") or 0.0, float, 0, 1,
                                           f"{where} 'sd_lora.inference_recipe' guidance_rescale")}
        if meta.get("ss_clip_skip") not in (None, "", "None"):  # kohya writes "None" when unset
            out["clip_skip"] = _number(meta["ss_clip_skip"], int, 1, 12, f"{where} 'ss_clip_skip'")
        size = re.fullmatch(r"\(?\s*(\d+)\s*,\s*(\d+)\s*\)?", meta.get("ss_resolution", ""))
        if size:  # the size the adapter was trained at: (width, height)
            out["resolution"] = (int(size.group(1)), int(size.group(2)))
        return out
    return {}


def _number(value, kind: type, low: float, high: float, where: str):
    """A number read from a file's metadata, finite and within [low, high], or one SdLoraError naming it."""
    try:
        number = kind(value)
    except (TypeError, ValueError, OverflowError):
        number = None
    if number is None or not math.isfinite(number) or not low <= number <= high:
        raise SdLoraError(f"{where} is {str(value)[:40]!r}, not {'a whole number' if kind is int else 'a number'} "
                          f"from {low:g} to {high:g}; the file is damaged or was edited by hand")
    return number
