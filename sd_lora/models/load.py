"""Load a Stable Diffusion base model and say what it is (family, prediction type).

Sources: `builtin:tiny` (shipped with sd-lora), a local diffusers directory or single-file checkpoint
(never touches the network), or a hub id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from sd_lora.errors import SdLoraError

__all__ = ["BaseModelInfo", "resolve_pretrained", "detect_family", "inspect_model", "load_pipeline", "BUILTIN_DIR"]

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "builtin"
_SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class BaseModelInfo:
    """What the base model is. `name` is what the user wrote; `location` what was loaded."""

    name: str
    location: str
    family: str  # sd1 | sd2 | sdxl
    prediction_type: str  # epsilon | v_prediction
    is_local: bool


def resolve_pretrained(pretrained: str) -> tuple[str, bool]:
    """Map `builtin:NAME` to its directory; return (location, is_local)."""
    if pretrained.startswith("builtin:"):
        name = pretrained.split(":", 1)[1]
        path = BUILTIN_DIR / name
        if not (path / "model_index.json").is_file():
            known = sorted(p.name for p in BUILTIN_DIR.iterdir() if (p / "model_index.json").is_file()) if BUILTIN_DIR.is_dir() else []
            raise SdLoraError(f"model.pretrained: no built-in model {name!r}; built-in models: {', '.join(known) or 'none'}")
        return str(path), True
    path = Path(pretrained).expanduser()
    looks_like_path = path.exists() or pretrained.startswith((".", "/", "~")) or pretrained.endswith(_SINGLE_FILE_SUFFIXES) \
        or pretrained.count("/") > 1 or "\\" in pretrained
    if not looks_like_path:
        return pretrained, False  # a hub id such as "runwayml/stable-diffusion-v1-5"
    if not path.exists():
        raise SdLoraError(f"model.pretrained: {pretrained!r} does not exist; give a diffusers model directory, "
                          "a hub id (e.g. 'stable-diffusion-v1-5/stable-diffusion-v1-5') or 'builtin:tiny'")
    if path.is_dir() and not (path / "model_index.json").is_file():
        raise SdLoraError(f"model.pretrained: {pretrained!r} is a directory but not a diffusers model "
                          "(no model_index.json); point at the folder that holds model_index.json, unet/, vae/ …")
    if path.is_file() and not pretrained.endswith(_SINGLE_FILE_SUFFIXES):
        raise SdLoraError(f"model.pretrained: {pretrained!r} is a file but not a checkpoint "
                          f"(expected one of {', '.join(_SINGLE_FILE_SUFFIXES)}) or a diffusers directory")
    return str(path), True


def detect_family(model_index: dict, unet_config: dict) -> str:
    """Family from the pipeline class and UNet config (SDXL: text_time embedding; SD2: linear projections)."""
    if "text_encoder_2" in model_index or unet_config.get("addition_embed_type") == "text_time":
        return "sdxl"
    if unet_config.get("use_linear_projection") or unet_config.get("cross_attention_dim") == 1024:
        return "sd2"
    return "sd1"


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise SdLoraError(f"model.pretrained: cannot read {what} at {path}: {e}") from e


def inspect_model(pretrained: str, family: str | None = None, prediction_type: str | None = None,
                  allow_pickle: bool = False) -> BaseModelInfo:
    """Read family and prediction type from a local model's config files (or a single file's key names),
    without loading weights.

    Hub ids are inspected after download by `load_pipeline`; here they get the overrides or sd1/epsilon.
    """
    location, is_local = resolve_pretrained(pretrained)
    detected_family, detected_pred = "sd1", "epsilon"
    if is_local and Path(location).is_dir():
        root = Path(location)
        index = _read_json(root / "model_index.json", "model_index.json")
        if "unet" not in index:
            raise SdLoraError(f"model.pretrained: {pretrained!r} is a diffusers model without a UNet "
                              f"({index.get('_class_name', 'unknown pipeline')}); sd-lora needs a Stable Diffusion model")
        detected_family = detect_family(index, _read_json(root / "unet" / "config.json", "unet/config.json"))
        sched_path = root / "scheduler" / "scheduler_config.json"
        if sched_path.is_file():
            detected_pred = _read_json(sched_path, "scheduler config").get("prediction_type", "epsilon")
    elif is_local:
        from sd_lora.models.single_file import inspect_single_file

        detected_family, detected_pred = inspect_single_file(location, family=family, prediction_type=prediction_type,
                                                             allow_pickle=allow_pickle)
    return BaseModelInfo(pretrained, location, family or detected_family, prediction_type or detected_pred, is_local)


def _quantized_unet(location: str, is_local: bool, quantize: str, torch_dtype: torch.dtype):
    from diffusers import BitsAndBytesConfig, UNet2DConditionModel

    if quantize == "nf4":
        qcfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    else:
        qcfg = BitsAndBytesConfig(load_in_8bit=True)
    return UNet2DConditionModel.from_pretrained(location, subfolder="unet", quantization_config=qcfg,
                                                torch_dtype=torch_dtype, local_files_only=is_local)


def load_pipeline(pretrained: str, *, family: str | None = None, prediction_type: str | None = None,
                  torch_dtype: torch.dtype = torch.float32, allow_pickle: bool = False, quantize: str | None = None):
    """Load the whole diffusers pipeline; returns (pipeline, BaseModelInfo).

    `quantize` ('nf4' / 'int8') loads the UNet through bitsandbytes (CUDA only; the caller checks).
    """
    from diffusers import DiffusionPipeline

    info = inspect_model(pretrained, family, prediction_type, allow_pickle)
    if info.is_local and Path(info.location).is_file():
        from sd_lora.models.single_file import load_single_file_pipeline

        if quantize:
            raise SdLoraError(
                "model.quantize: not supported for single-file checkpoints; convert the checkpoint to a diffusers "
                "directory first, offline: python -c \"from sd_lora.models.single_file import load_single_file_pipeline "
                "as f; f('MODEL.safetensors')[0].save_pretrained('MODEL_DIR')\" and set model.pretrained to that folder")
        pipe, fam = load_single_file_pipeline(info.location, family=family, prediction_type=prediction_type,
                                              torch_dtype=torch_dtype, allow_pickle=allow_pickle)
        return pipe, BaseModelInfo(pretrained, info.location, fam, pipe.scheduler.config.prediction_type, True)
    kwargs = dict(torch_dtype=torch_dtype, local_files_only=info.is_local)
    if quantize:
        kwargs["unet"] = _quantized_unet(info.location, info.is_local, quantize, torch_dtype)
    if info.family != "sdxl":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipe = DiffusionPipeline.from_pretrained(info.location, **kwargs)
    except (OSError, ValueError) as e:
        where = "local directory" if info.is_local else "hub id (needs network, or a cached copy)"
        raise SdLoraError(f"model.pretrained: could not load {pretrained!r} as a {where}: {e}") from e
    if not info.is_local:
        unet_cfg = dict(pipe.unet.config)
        components = {k: None for k in pipe.components}
        info = BaseModelInfo(pretrained, info.location, family or detect_family(components, unet_cfg),
                             prediction_type or pipe.scheduler.config.get("prediction_type", "epsilon"), False)
    if not hasattr(pipe, "unet") or not hasattr(pipe, "vae"):
        raise SdLoraError(f"model.pretrained: {pretrained!r} is not a Stable Diffusion pipeline ({type(pipe).__name__})")
    return pipe, info
