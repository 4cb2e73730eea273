"""The memory estimate of a configured run, and `train.gradient_checkpointing = "auto"` resolved.

Glue between the config and `memory_estimate`'s explicit-input functions: the components' configs (read from
the model folder for `--dry-run`, taken from the loaded models at the start of training) are built on the meta
device to count their parameters and the adapters the config would inject; the family's activation function
does the rest.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from sd_lora.train.memory_estimate import (ACTIVATION_FIGURES, MemoryEstimate, checkpointing_decision,
                                           estimate_memory, free_memory)

__all__ = ["estimate_run", "component_configs", "dry_run_lines", "with_resolved_checkpointing"]

_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_CLASSES = {"unet": ("diffusers", "UNet2DConditionModel"), "vae": ("diffusers", "AutoencoderKL"),
            "text_encoder": ("transformers", "CLIPTextModel"),
            "text_encoder_2": ("transformers", "CLIPTextModelWithProjection")}


def component_configs(pretrained: str, revision: str | None = None) -> dict[str, dict] | None:
    """{component: config dict} read from a diffusers model's config files, no weights; None when not cheaply
    readable (a single file, a hub model not in the cache)."""
    from sd_lora.errors import SdLoraError
    from sd_lora.models.load import _cached_file, resolve_pretrained

    try:
        location, is_local = resolve_pretrained(pretrained)
        out = {}
        for name in _CLASSES:
            path = Path(location) / name / "config.json" if is_local else _cached_file(pretrained, f"{name}/config.json",
                                                                                   revision)
            if path and Path(path).is_file():
                out[name] = json.loads(Path(path).read_text(encoding="utf-8"))
    except (SdLoraError, OSError, ValueError):
        return None
    return out if {"unet", "vae", "text_encoder"} <= set(out) else None


def _on_meta(name: str, config: dict) -> torch.nn.Module:
    import importlib

    library, cls_name = _CLASSES[name]
    cls = getattr(importlib.import_module(library), cls_name)
    with torch.device("meta"):
        if library == "diffusers":
            from sd_lora.train.memory_estimate import _quiet

            with _quiet():
                return cls.from_config({k: v for k, v in config.items() if not k.startswith("_")})
        from transformers import CLIPTextConfig

        return cls(CLIPTextConfig(**{k: v for k, v in config.items() if not k.startswith("_")}))


def _family(unet_config: dict) -> str:
    from sd_lora.models.families import detect_family

    return detect_family({"unet": ["diffusers", "UNet2DConditionModel"]}, unet_config)


def _figure(family: str):
    """The activation-figure function of `family`'s kind of denoiser, or None."""
    from sd_lora.models.families import get_family

    return ACTIVATION_FIGURES.get(get_family(family).denoiser)


def _injector(network, component: str, counted: list[int]):
    from sd_lora.adapters import adapter_spec, build_peft_config, inject, trainable_parameters

    def add(model):
        inject(model, build_peft_config(network.type, adapter_spec(network, model, component)))
        counted.append(sum(p.numel() for p in trainable_parameters(model)))

    return add


def estimate_run(cfg, configs: dict[str, dict], checkpointing: bool, device: str = "cpu",
                 encoders_freed: tuple[bool, bool] = (False, False), family: str | None = None) -> MemoryEstimate:
    """The estimate of `cfg` (precision already resolved) over `configs` ({component: config dict}).
    `encoders_freed`: (VAE, text encoders) released once their outputs are cached."""
    t, n, d = cfg.train, cfg.network, cfg.data
    dtype = _DTYPES[t.mixed_precision]
    family = family or cfg.model.family or _family(configs["unet"])
    sizes, adapters = {}, []
    for name, config in configs.items():
        model = _on_meta(name, config)
        per = 4 if name == "vae" else torch.tensor([], dtype=dtype).element_size()  # the VAE stays fp32
        sizes[name] = sum(p.numel() for p in model.parameters()) * per
        if name.startswith("text_encoder") and n.train_text_encoder:
            _injector(n, "text_encoder", adapters)(model)
    vae_scale = 2 ** (len(configs["vae"]["block_out_channels"]) - 1)
    latent = (d.resolution // vae_scale, d.resolution // vae_scale)
    figure = _figure(family)(configs["unet"], latent, t.batch_size, dtype, checkpointing,
                                        _injector(n, "unet", adapters))
    kept = sizes["unet"] + (0 if encoders_freed[0] else sizes["vae"]) + \
        (0 if encoders_freed[1] else sum(v for k, v in sizes.items() if k.startswith("text_encoder")))
    return estimate_memory(sum(sizes.values()), kept, sum(adapters), t.optimizer, figure, t.fused_backward, device)


def _encoders_freed(cfg, scan, device: str) -> tuple[bool, bool]:
    """What sd_lora.train.memory.release_encoders will free, from the cache decision the plan shows."""
    from sd_lora.data import build_dataset, has_validation
    from sd_lora.data.cache import choose_caches
    from sd_lora.data.plan import samples_seen

    t = cfg.train
    ds = build_dataset(cfg.data, scan, split="train", seed=t.seed)
    seen = samples_seen(len(ds), t.batch_size, t.gradient_accumulation_steps, 1, t.max_steps, t.max_epochs)
    choice = choose_caches(cfg.data, ds, cfg.network.train_text_encoder, seen)
    free = not has_validation(cfg.data) and (device != "cpu" or not cfg.sample.every_n_steps)
    return choice.latents and free, choice.text and free and not cfg.network.train_text_encoder


def dry_run_lines(cfg, scan) -> list[str]:
    """The memory lines of `sd-lora train --dry-run` (cfg's precision resolved): the estimate with checkpointing
    as configured or as 'auto' would choose now, and why."""
    configs = component_configs(cfg.model.pretrained, cfg.model.revision)
    if configs is not None and _figure(cfg.model.family or _family(configs["unet"])) is None:
        return [f"Memory estimate: no activation figures for the {cfg.model.family} family yet"]
    if configs is None:
        return ["Memory estimate: not available before loading (a single-file checkpoint or an uncached hub model)"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    freed = _encoders_freed(cfg, scan, device)
    requested = cfg.train.gradient_checkpointing
    try:
        without = estimate_run(cfg, configs, False, device, freed)
    except Exception as error:  # best effort: --dry-run still shows the rest of the plan
        return [f"Memory estimate: not available ({type(error).__name__}: {str(error)[:200]})"]
    available = free_memory(device)
    if device == "cpu" and available is not None:
        available += without.overhead  # this process is about that big already
    on, why = checkpointing_decision(requested, without.training, available)
    chosen = estimate_run(cfg, configs, True, device, freed) if on else without
    return chosen.lines(device) + [f"  gradient checkpointing {'on' if on else 'off'} [{why}]"]


def with_resolved_checkpointing(cfg, components: dict[str, torch.nn.Module], device: torch.device,
                                family: str | None = None):
    """cfg with train.gradient_checkpointing made true/false once the models are loaded ({name: module}: unet,
    vae, text_encoder[, text_encoder_2]); what they take is already allocated, so what training adds must fit
    in what is free. Returns the cfg and the line saying why."""
    t = cfg.train
    known = "unet" in components and set(components) <= set(_CLASSES) and \
        _figure(family or _family(dict(components["unet"].config))) is not None
    if t.gradient_checkpointing == "auto" and not known:
        on, why = False, f"auto: no activation estimate for the {family} family yet, so off"
    elif t.gradient_checkpointing == "auto":
        configs = {name: dict(m.config) if hasattr(m.config, "keys") else m.config.to_dict()
                   for name, m in components.items()}
        try:
            e = estimate_run(cfg, configs, False, device.type, family=family)
        except Exception as error:  # a best-effort figure must never stop a run; the plan says why it is missing
            e, why = None, f"auto: no estimate ({type(error).__name__}: {str(error)[:120]}), so off"
        on = False
        if e is not None:
            on, why = checkpointing_decision("auto", e.training - e.overhead - e.weights_training, free_memory(device))
    else:
        on, why = checkpointing_decision(t.gradient_checkpointing, 0, None)
    out = dataclasses.replace(cfg, train=dataclasses.replace(t, gradient_checkpointing=on))
    if hasattr(cfg, "given"):
        out.given = cfg.given
    return out, f"memory: gradient checkpointing {'on' if on else 'off'} [{why}]"
