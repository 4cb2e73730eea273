"""Metadata the community tools read from a LoRA file: `ss_*` keys, `modelspec.*`, hashes, our recipe.

Every value is a string (safetensors requires it; AUTOMATIC1111 JSON-decodes values starting with `{`).
`community_metadata(info)` turns what the training run knows into those strings; keys whose info is
missing are left out, except the minimum set the reference trainer always writes.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import struct

from sd_lora.errors import SdLoraError
from sd_lora.fileio import printable
from sd_lora.formats.safetensors_io import serialize
from sd_lora.models.families import DEFAULT_FAMILY, file_family

__all__ = [
    "serialize_with_hashes",
    "unet_layout",
    "HASH_KEYS",
    "LAYOUT_KEY",
    "community_metadata",
    "minimum_metadata",
    "base_model_version",
    "model_hash",
    "legacy_hash",
    "INFO_KEYS",
    "RECIPE_KEY",
]

RECIPE_KEY = "sd_lora.inference_recipe"
LAYOUT_KEY = "sd_lora.unet_layout"
HASH_KEYS = ("sshs_model_hash", "sshs_legacy_hash")
# the UNet config fields SDXL block names depend on
_LAYOUT_FIELDS = ("layers_per_block", "down_block_types", "up_block_types", "mid_block_type")

_NETWORK_MODULE = {"lora": "networks.lora", "locon": "networks.lora", "dora": "lycoris.kohya",
                   "loha": "lycoris.kohya", "lokr": "lycoris.kohya"}


def _num(x) -> str:
    return str(x)


def _float(x) -> str:
    return str(float(x))


def _text_tree(x):
    """`x` with every string valid Unicode: a folder name that is not UTF-8 (surrogate-escaped) shows its byte as
    \\xNN, so the JSON stays valid text (escaping afterwards would break the JSON)."""
    if isinstance(x, str):
        return printable(x)
    if isinstance(x, dict):
        return {_text_tree(k): _text_tree(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_text_tree(v) for v in x]
    return x


def _json(x) -> str:
    return json.dumps(_text_tree(x), ensure_ascii=False, sort_keys=True)


def _timestamp(x) -> str:
    # the reference trainer stores unix time (seconds) as a float string
    if isinstance(x, _dt.datetime):
        x = x.timestamp()
    return str(float(x))


def _resolution_tuple(x) -> str:
    w, h = (x, x) if isinstance(x, int) else tuple(x)
    return f"({w}, {h})"


def _tag_frequency(x) -> str:
    return _json({str(d): {str(t): int(c) for t, c in tags.items()} for d, tags in x.items()})


def _dataset_dirs(x) -> str:
    return _json({str(d): {"n_repeats": int(v.get("n_repeats", 1)), "img_count": int(v.get("img_count", 0))}
                  for d, v in x.items()})


# info key -> (metadata key, formatter). Documented set the training loop may pass.
INFO_KEYS = {
    "resolution": ("ss_resolution", _resolution_tuple),
    "steps": ("ss_steps", _num),
    "max_train_steps": ("ss_max_train_steps", _num),
    "epochs": ("ss_num_epochs", _num),
    "epoch": ("ss_epoch", _num),
    "learning_rate": ("ss_learning_rate", _float),
    "unet_lr": ("ss_unet_lr", _float),
    "text_encoder_lr": ("ss_text_encoder_lr", _float),
    "lr_scheduler": ("ss_lr_scheduler", str),
    "lr_warmup_steps": ("ss_lr_warmup_steps", _num),
    "optimizer": ("ss_optimizer", str),
    "seed": ("ss_seed", _num),
    "num_train_images": ("ss_num_train_images", _num),
    "num_reg_images": ("ss_num_reg_images", _num),
    "batch_size": ("ss_batch_size_per_device", _num),
    "gradient_accumulation_steps": ("ss_gradient_accumulation_steps", _num),
    "gradient_checkpointing": ("ss_gradient_checkpointing", str),
    "mixed_precision": ("ss_mixed_precision", str),
    "clip_skip": ("ss_clip_skip", _num),
    "noise_offset": ("ss_noise_offset", _float),
    "max_token_length": ("ss_max_token_length", _num),
    "multires_noise_iterations": ("ss_multires_noise_iterations", _num),
    "multires_noise_discount": ("ss_multires_noise_discount", _float),
    "ip_noise_gamma": ("ss_ip_noise_gamma", _float),
    "debiased_estimation": ("ss_debiased_estimation", str),
    "loss_type": ("ss_loss_type", str),
    "huber_schedule": ("ss_huber_schedule", str),
    "huber_c": ("ss_huber_c", _float),
    "zero_terminal_snr": ("ss_zero_terminal_snr", str),
    "network_dropout": ("ss_network_dropout", _float),
    "masked_loss": ("ss_masked_loss", str),
    "ema_decay": ("sd_lora.ema_decay", _float),
    "exported_weights": ("sd_lora.exported_weights", str),
    "samples": ("sd_lora.samples", _json),
    "min_snr_gamma": ("ss_min_snr_gamma", _float),
    "caption_dropout_rate": ("ss_caption_dropout_rate", _float),
    "output_name": ("ss_output_name", str),
    "session_id": ("ss_session_id", _num),
    "training_started_at": ("ss_training_started_at", _timestamp),
    "training_finished_at": ("ss_training_finished_at", _timestamp),
    "training_comment": ("ss_training_comment", str),
    "base_model_name": ("ss_sd_model_name", str),
    "base_model_hash": ("ss_new_sd_model_hash", str),
    "dataset_dirs": ("ss_dataset_dirs", _dataset_dirs),
    "tag_frequency": ("ss_tag_frequency", _tag_frequency),
    "init_weights": ("sd_lora.init_weights", _json),  # the parent LoRA training started from: file, hash, type
}


def base_model_version(family: str, v_prediction: bool = False) -> str:
    """`ss_base_model_version` as AUTOMATIC1111 reads it (`sdxl_` prefix -> SDXL)."""
    return file_family(family).file_metadata(v_prediction)["ss_base_model_version"]


def _is_v(info: dict) -> bool:
    return info.get("prediction_type") in ("v", "v_prediction") or bool(info.get("v_prediction", False))


def minimum_metadata(info: dict) -> dict[str, str]:
    """The keys the reference trainer keeps even with metadata off, plus the required modelspec keys (the
    `ss_network_dim/alpha/module` ones only when `info` holds network_dim). The family gives the model facts
    (`Family.file_metadata`, by `info["model_variant"]` for SD3 / FLUX)."""
    family = file_family(info.get("family", DEFAULT_FAMILY))
    v = _is_v(info)
    adapter = info.get("adapter_type", "lora")
    args = dict(info.get("network_args") or {})
    if adapter in ("loha", "lokr", "dora") and "algo" not in args:
        args["algo"] = "lora" if adapter == "dora" else adapter
    if adapter == "dora":
        args.setdefault("dora_wd", "True")
    resolution = info.get("resolution", family.default_resolution(v))
    w, h = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    date = info.get("date") or _dt.datetime.now()
    if isinstance(date, _dt.datetime):
        date = date.replace(microsecond=0).isoformat()
    facts = family.file_metadata(v, info.get("model_variant"))
    # dim / alpha / module are written only from what is measured on the weights (formats.export.weights_facts):
    # never a placeholder that a later step must overwrite
    network = {"ss_network_module": info.get("network_module") or _NETWORK_MODULE.get(adapter, "networks.lora"),
               "ss_network_dim": str(int(info["network_dim"])),
               "ss_network_alpha": _float(info.get("network_alpha", info["network_dim"]))} \
        if info.get("network_dim") is not None else {}
    return {
        **network,
        "ss_network_args": _json({k: str(v) for k, v in args.items()}),
        "ss_base_model_version": facts["ss_base_model_version"],
        "ss_v2": facts["ss_v2"],
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": facts["modelspec.architecture"],
        "modelspec.implementation": facts["modelspec.implementation"],
        "modelspec.title": str(info.get("title") or info.get("output_name") or "sd-lora adapter"),
        "modelspec.resolution": f"{w}x{h}",
        "modelspec.date": str(date),
        "modelspec.prediction_type": facts["modelspec.prediction_type"],
    }


def community_metadata(info: dict) -> dict[str, str]:
    """`ss_*`, `modelspec.*` and the inference recipe for a file; every value a string.

    `info` keys: family, encoder_layer (modelspec's; default clip_skip), prediction_type ("epsilon"/"v_prediction") or v_prediction, adapter_type
    (lora/locon/loha/lokr/dora), network_module, network_dim, network_alpha, network_args (dict), title,
    date, description, trigger_words, inference (dict: scheduler, steps, guidance, clip_skip, resolution,
    sample_prompts, trigger_words), `kohya_fields` ({metadata key: value} for kohya's remaining `ss_*` keys,
    written as kohya writes them, "None" included), and any key of `INFO_KEYS`. Missing keys are omitted.
    """
    meta = minimum_metadata(info)
    for key, (meta_key, fmt) in INFO_KEYS.items():
        if info.get(key) is not None:
            meta[meta_key] = fmt(info[key])
    layer = info["encoder_layer"] if "encoder_layer" in info else info.get("clip_skip")
    if layer is not None:
        meta["modelspec.encoder_layer"] = str(layer)
    if info.get("description"):
        meta["modelspec.description"] = str(info["description"])
    if info.get("trigger_words"):
        meta["modelspec.trigger_phrase"] = ", ".join(info["trigger_words"])
    if info.get("inference"):
        meta[RECIPE_KEY] = _json(info["inference"])
    for key, value in (info.get("kohya_fields") or {}).items():  # the rest of kohya's keys, as kohya writes them
        meta.setdefault(key, _kohya_str(value))
    return meta


def _kohya_str(x) -> str:
    """kohya's own formatting: str() of the value ("None", "True", "0.1"), JSON for tables ("null" for none)."""
    return json.dumps(_text_tree(x)) if isinstance(x, (dict, list)) else str(x)


def model_hash(blob: bytes) -> str:
    """`sshs_model_hash`: SHA-256 of the tensor data (after the header), so metadata edits do not change it."""
    (n,) = struct.unpack("<Q", blob[:8])
    return hashlib.sha256(memoryview(blob)[8 + n:]).hexdigest()


def legacy_hash(blob: bytes) -> str:
    """`sshs_legacy_hash`: first 8 hex digits of SHA-256 of the file's bytes 0x100000-0x10FFFF."""
    return hashlib.sha256(memoryview(blob)[0x100000:0x110000]).hexdigest()[:8]


def unet_layout(unet_config) -> dict:
    """The UNet config fields the SGM block numbering depends on (stored with SDXL files)."""
    get = unet_config.get if isinstance(unet_config, dict) else lambda k, d=None: getattr(unet_config, k, d)
    out = {k: get(k, None) for k in _LAYOUT_FIELDS}
    out = {k: list(v) if isinstance(v, tuple) else v for k, v in out.items() if v is not None}
    return out


def serialize_with_hashes(tensors, metadata: dict[str, str]) -> bytes:
    """safetensors bytes whose metadata carries sshs_model_hash / sshs_legacy_hash of those same bytes."""
    draft = serialize(tensors, {**metadata, "sshs_model_hash": "0" * 64, "sshs_legacy_hash": "0" * 8})
    final = {**metadata, "sshs_model_hash": model_hash(draft), "sshs_legacy_hash": legacy_hash(draft)}
    blob = serialize(tensors, final)
    if model_hash(blob) != final["sshs_model_hash"] or legacy_hash(blob) != final["sshs_legacy_hash"]:
        raise SdLoraError("internal error: the safetensors layout changed between serializations; hashes differ")
    return blob
