"""Regenerate training samples from their recorded recipes, and the generation defaults an adapter records.

A training run records each sample's full recipe (prompt, negative, seed, steps, sampler, guidance and its
rescale, zero-terminal SNR, size, clip skip, LoRA scale, dtype, base model and its hash) in the adapter's
metadata (`sd_lora.samples`) and in each sample PNG (`sd-lora-recipe` text chunk).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sd_lora.errors import SdLoraError

__all__ = ["read_recipes", "recipe_request", "adapter_defaults"]

SAMPLES_KEY = "sd_lora.samples"
RECIPE_CHUNK = "sd-lora-recipe"


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as e:  # not a safetensors file, or damaged
        raise SdLoraError(f"--recipe {path}: not a readable .safetensors adapter ({e})") from None


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
        record = json.loads(text)
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
    return [(record, path) for record in json.loads(text)]


def recipe_request(record: dict, adapter: Path):
    from sd_lora.inference import GenerationRequest

    return GenerationRequest(prompt=record["prompt"], negative_prompt=record["negative_prompt"], seed=record["seed"],
                             steps=record["steps"], guidance=record["guidance"], width=record["width"],
                             height=record["height"], clip_skip=record["clip_skip"],
                             guidance_rescale=record["guidance_rescale"], loras=[(str(adapter), record["scale"])])


def adapter_defaults(files: list[Path]) -> dict:
    """clip_skip, zero_terminal_snr, guidance_rescale and resolution the first sd-lora-trained adapter among `files`
    records (empty when none does)."""
    for file in files:
        if not (file.is_file() and file.suffix == ".safetensors"):
            continue
        meta = _metadata(file)
        if "sd_lora.inference_recipe" not in meta and "ss_clip_skip" not in meta:
            continue
        recipe = json.loads(meta.get("sd_lora.inference_recipe", "{}"))
        out = {"zero_terminal_snr": bool(recipe.get("zero_terminal_snr")) or meta.get("ss_zero_terminal_snr") == "True",
               "guidance_rescale": float(recipe.get("guidance_rescale") or 0.0)}
        if meta.get("ss_clip_skip") not in (None, "", "None"):  # kohya writes "None" when unset
            out["clip_skip"] = int(meta["ss_clip_skip"])
        size = re.fullmatch(r"\(?\s*(\d+)\s*,\s*(\d+)\s*\)?", meta.get("ss_resolution", ""))
        if size:  # the size the adapter was trained at: (width, height)
            out["resolution"] = (int(size.group(1)), int(size.group(2)))
        return out
    return {}
