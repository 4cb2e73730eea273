"""Load a single-file Stable Diffusion checkpoint (original LDM / SGM layout) fully offline.

The family comes from the checkpoint's keys; the diffusers configs come from configs sd-lora
stored in the file's metadata, else from the tensor shapes plus the real models' conventions
(`architectures.py`); the tokenizer is CLIP's, shipped with sd-lora (`clip_vocab.py`). The
weights are converted by diffusers' own single-file code, pointed at a config directory written
here, so nothing touches the network. Pickle checkpoints need an explicit opt-in.

What weights cannot tell: v-prediction (SD2 768-v needs `model.prediction_type = "v_prediction"`),
attention head counts and GroupNorm groups (the real models' values are assumed unless the
metadata says otherwise).
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import torch

from sd_lora.errors import SdLoraError
from sd_lora.models.families import unet_architectures as architectures
from sd_lora.models.clip_vocab import CLIP_VOCAB_SIZE, write_clip_tokenizer, write_tokenizer_dir
from sd_lora.models.integrity import require_filled
from sd_lora.models.families.unet_single_file_configs import (
    METADATA_KEY, PREFIXES, TEXT_ENCODERS, derive_configs, describe_pipeline, detect_checkpoint_family, stored_record,
)

__all__ = ["PICKLE_SUFFIXES", "read_checkpoint", "inspect_single_file", "load_single_file_pipeline",
           "save_single_file"]

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
# Only these are read: full checkpoints also hold EMA copies, optimizer state, loss modules...
_WANTED = tuple(PREFIXES.values())
_MARKERS = ("v_pred", "ztsnr")  # empty marker tensors some trainers add (v-prediction, zero terminal SNR)


def _wanted(keys) -> list[str]:
    keys = list(keys)
    # A file with none of the wanted keys is read whole so the error can say what it is instead.
    return [k for k in keys if k.startswith(_WANTED) or k in _MARKERS] or keys


def _read_safetensors(path: Path, tensors: bool) -> tuple[dict, dict]:
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            return {k: f.get_tensor(k) if tensors else None for k in _wanted(f.keys())}, metadata
    except (SafetensorError, OSError, ValueError) as e:
        raise SdLoraError(f"model.pretrained: {path} is not a readable .safetensors checkpoint ({e}); "
                          "the file may be truncated (an interrupted download) or not a checkpoint at all") from e


def _read_pickle(path: Path, allow_pickle: bool) -> dict:
    if not allow_pickle:
        raise SdLoraError(
            f"model.pretrained: {path} is a pickle checkpoint; unpickling a file can run arbitrary code, so "
            "sd-lora refuses it by default. Prefer a .safetensors copy of the model; if you trust this file, "
            "set model.allow_pickle = true (it is then read with torch.load(weights_only=True)).")
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError... depending on the damage
        raise SdLoraError(f"model.pretrained: could not read pickle checkpoint {path} with "
                          f"torch.load(weights_only=True): "
                          f"{e}. The file may be truncated, or hold objects other than tensors; convert it to "
                          ".safetensors with a tool you trust.") from e
    while isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]  # Lightning-style checkpoints nest the weights
    if not isinstance(sd, dict):
        raise SdLoraError(f"model.pretrained: {path} holds a {type(sd).__name__}, not a state dict of tensors")
    return {k: sd[k] for k in _wanted(sd) if isinstance(sd[k], torch.Tensor)}


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    # 8-byte little-endian header length, then the JSON header.
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 31)


def read_checkpoint(path: str | Path, allow_pickle: bool = False,
                    tensors: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict, safetensors metadata) of a single-file checkpoint; pickles only with `allow_pickle`.

    Only the model's weights are read (no EMA copies); `tensors=False` reads a safetensors file's
    key names alone (values None), which costs nothing even for a 7 GB file.
    """
    path = Path(path)
    if not path.is_file():
        raise SdLoraError(f"model.pretrained: checkpoint {path} does not exist")
    if _is_safetensors(path):
        return _read_safetensors(path, tensors)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:2] == b"PK" or magic[:1] == b"\x80" or path.suffix.lower() in PICKLE_SUFFIXES:
        return _read_pickle(path, allow_pickle), {}
    raise SdLoraError(f"model.pretrained: {path} is neither a .safetensors file nor a torch checkpoint "
                      f"(starts with {magic!r}); give a Stable Diffusion checkpoint or a diffusers directory")


def _prediction_type(family: str, override: str | None, record: dict | None, sd: dict, metadata: dict,
                     where: str, note: bool) -> str:
    if override:
        return override
    if record and record.get("prediction_type"):
        return record["prediction_type"]
    spec = metadata.get("modelspec.prediction_type", "").lower()  # Stability's model-spec metadata
    if spec in ("v", "v_prediction", "v-prediction") or "v_pred" in sd:  # "v_pred": marker key some trainers add
        return "v_prediction"
    if note and spec != "epsilon" and family == "sd2":
        print(f"note: {where} is an SD2 checkpoint; its prediction type cannot be read from the weights, so "
              "epsilon (SD2 512-base) is assumed. For SD2 768-v models set model.prediction_type = \"v_prediction\".")
    return "epsilon"


def _write_config_dir(root: Path, family: str, configs: dict) -> None:
    from transformers import CLIPTextConfig

    for name, cls in (("unet", "UNet2DConditionModel"), ("vae", "AutoencoderKL")):
        (root / name).mkdir(parents=True)
        (root / name / "config.json").write_text(json.dumps({"_class_name": cls, **configs[name]}), encoding="utf-8")
    for name, *_ in TEXT_ENCODERS[family]:
        CLIPTextConfig(**configs[name]).save_pretrained(str(root / name))


def _write_tokenizers(root: Path, family: str, configs: dict, record: dict | None, tokenizer_dir: str | None,
                      where: str) -> list[str]:
    import shutil

    names = []
    for tok_name, (te_name, _, _, pad) in zip(("tokenizer", "tokenizer_2"), TEXT_ENCODERS[family]):
        target, stored, vocab = root / tok_name, (record or {}).get(tok_name), configs[te_name]["vocab_size"]
        if tokenizer_dir:
            src = Path(tokenizer_dir) / tok_name if (Path(tokenizer_dir) / tok_name).is_dir() else Path(tokenizer_dir)
            if not ((src / "vocab.json").is_file() or (src / "tokenizer.json").is_file()):
                raise SdLoraError(f"model.tokenizer: {src} holds no vocab.json or tokenizer.json; "
                                  "give a CLIP tokenizer directory")
            shutil.copytree(src, target)
        elif stored:
            write_tokenizer_dir(target, stored["vocab"], stored["merges"], stored["pad_token"],
                                stored.get("max_length", 77))
        elif vocab == CLIP_VOCAB_SIZE:
            write_clip_tokenizer(target, pad)
        else:
            raise SdLoraError(f"model.pretrained: the {te_name} of {where} has {vocab} tokens, not CLIP's "
                              f"{CLIP_VOCAB_SIZE}, and the file carries no tokenizer; set model.tokenizer to a "
                              "directory with its vocab.json and merges.txt")
        names.append(tok_name)
    return names


def _subset(sd: dict, prefix: str, layout: str = "", layers: int = 0) -> dict:
    out = {k: v for k, v in sd.items() if k.startswith(prefix)}
    if layout.startswith("openclip"):
        # Blocks past the model's depth (SD2's unused last block) must not reach the converter.
        rx = re.compile(re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
        out = {k: v for k, v in out.items() if not ((m := rx.match(k)) and int(m.group(1)) >= layers)}
    return out


def _missing_error(name: str, missing: list[str], where: str) -> SdLoraError:
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return SdLoraError(f"model.pretrained: {where} lacks weights of the {name}: {shown}; "
                       "the checkpoint is incomplete or its layout does not match its family")


def _unconverted(name: str, part: dict, root: Path) -> list[str]:
    """Which UNet/VAE weights diffusers' conversion of `part` leaves out (to explain a failed load)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    cls, convert = {"unet": (UNet2DConditionModel, convert_ldm_unet_checkpoint),
                    "vae": (AutoencoderKL, convert_ldm_vae_checkpoint)}.get(name, (None, None))
    if cls is None:
        return []
    config = cls.load_config(str(root), subfolder=name)
    with torch.device("meta"):
        expected = cls.from_config(config).state_dict()
    try:
        converted = convert(part, dict(config))
    except KeyError as e:
        return [str(e)]
    return sorted(set(expected) - set(converted))


def _load_components(sd: dict, root: Path, family: str, configs: dict, torch_dtype, where: str) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import SingleFileComponentError, create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    # float32 is what the empty models hold already; naming it only makes diffusers warn.
    dtype = None if torch_dtype == torch.float32 else torch_dtype
    common = dict(config=str(root), local_files_only=True, torch_dtype=dtype)
    jobs = {"unet": (UNet2DConditionModel.from_single_file, _subset(sd, PREFIXES["unet"])),
            "vae": (AutoencoderKL.from_single_file, _subset(sd, PREFIXES["vae"]))}
    for name, prefix, layout, _ in TEXT_ENCODERS[family]:
        cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
        jobs[name] = (lambda part, cls=cls, **kw: create_diffusers_clip_model_from_ldm(cls, part, **kw),
                      _subset(sd, prefix, layout, configs[name]["num_hidden_layers"]))
    parts = {}
    for name, (load, part) in jobs.items():
        try:
            parts[name] = load(part, subfolder=name, **common)
        except (ValueError, KeyError, RuntimeError, NotImplementedError, SingleFileComponentError) as e:
            missing = _unconverted(name, part, root)
            if missing:
                raise _missing_error(name, missing, where) from e
            raise SdLoraError(f"model.pretrained: could not load the {name} of {where}: {e}") from e
        require_filled({name: parts[name]}, where)  # diffusers leaves weights the file lacks on the meta device
    return parts


def _scheduler(family: str, prediction_type: str, record: dict | None, sd: dict):
    import diffusers

    stored = (record or {}).get("scheduler") or {}
    cls = getattr(diffusers, str(stored.get("class", "")), None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        cls, stored = diffusers.DDIMScheduler, {"config": architectures.scheduler_config(family)}
    config = dict(stored["config"], prediction_type=prediction_type)
    if "ztsnr" in sd:  # marker key of models trained with zero terminal SNR
        config["rescale_betas_zero_snr"] = True
    return cls.from_config(config)


def _identify(sd: dict, metadata: dict, family: str | None, prediction_type: str | None, where: str,
              note: bool) -> tuple[str, dict | None, str]:
    """(family, stored record or None, prediction type) of a checkpoint."""
    detected = detect_checkpoint_family(sd, where)
    if family and family != detected:
        raise SdLoraError(f"model.family = {family!r}, but {where} is laid out as an {detected} checkpoint "
                          f"(text encoder under {TEXT_ENCODERS[detected][0][1]}*); "
                          f"remove model.family or set it to {detected!r}")
    record = stored_record(metadata, where)
    if record and record["family"] != detected:
        record = None  # metadata copied from another model: the weights decide
    return detected, record, _prediction_type(detected, prediction_type, record, sd, metadata, where, note)


def inspect_single_file(path: str, *, family: str | None = None, prediction_type: str | None = None,
                        allow_pickle: bool = False) -> tuple[str, str]:
    """(family, prediction type) of a checkpoint, read from key names and metadata only (no weights
    for .safetensors). Raises the same SdLoraError as loading would for refused or foreign files."""
    sd, metadata = read_checkpoint(path, allow_pickle, tensors=False)
    family, _, prediction = _identify(sd, metadata, family, prediction_type, str(path), note=False)
    return family, prediction


def load_single_file_pipeline(path: str, *, family: str | None = None, prediction_type: str | None = None,
                              torch_dtype: torch.dtype = torch.float32, allow_pickle: bool = False,
                              tokenizer_dir: str | None = None):
    """Load an original-layout checkpoint as a diffusers pipeline, offline. Returns (pipeline, family).

    The family is read from the key layout; a `family` that contradicts it is an error.
    `prediction_type` overrides the stored/marked/default one; `tokenizer_dir` replaces the
    shipped CLIP tokenizer (needed only for a non-CLIP vocabulary without a stored tokenizer).
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    where = str(path)
    sd, metadata = read_checkpoint(path, allow_pickle)
    family, record, prediction = _identify(sd, metadata, family, prediction_type, where, note=True)
    configs = record or derive_configs(sd, family, prediction, where)
    with tempfile.TemporaryDirectory(prefix="sd_lora_single_file_") as tmp:
        root = Path(tmp)
        _write_config_dir(root, family, configs)
        tokenizers = {n: CLIPTokenizer.from_pretrained(str(root / n))
                      for n in _write_tokenizers(root, family, configs, record, tokenizer_dir, where)}
        parts = _load_components(sd, root, family, configs, torch_dtype, where)
    parts.update(tokenizers, scheduler=_scheduler(family, prediction, record, sd))
    if family == "sdxl":
        return StableDiffusionXLPipeline(**parts), family
    return StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False), family


def save_single_file(pipe, path: str | Path, family: str, *, store_config: bool = True,
                     with_tokenizers: bool | None = None) -> Path:
    """Write `pipe` as one original-layout `.safetensors` checkpoint (atomically).

    `store_config` puts the exact configs in the metadata, so the file loads back identically
    even when its sizes break the real models' conventions; with it, tokenizers that are not
    CLIP's (tiny models) are stored too, unless `with_tokenizers` says otherwise.
    """
    from safetensors.torch import save_file

    from sd_lora.fileio import atomic_path
    from sd_lora.models.families.unet_original_layout import pipeline_to_original

    # clone: the layout writer returns views (1x1-conv reshapes) that safetensors must not alias
    state = {k: v.detach().clone().contiguous() for k, v in pipeline_to_original(pipe, family).items()}
    metadata = {"format": "pt"}
    if store_config:
        metadata[METADATA_KEY] = json.dumps(describe_pipeline(pipe, family, with_tokenizers=with_tokenizers))
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return Path(path)
