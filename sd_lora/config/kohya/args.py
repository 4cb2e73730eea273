"""kohya sd-scripts `train_network.py` / `sdxl_train_network.py` options (a command line, or the TOML of its
`--config_file`) -> an sd-lora config, key by key.

`KOHYA_ARGS` is the one table: each kohya option maps to an sd-lora key (with a converter where values differ),
or is dropped with the reason. Dropped options fall in two kinds: `refused` ones change what is trained and
stop the translation (one error listing all of them); `ignored` ones change nothing sd-lora trains (logging,
memory tricks, hub uploads) and are listed beside the result.
"""

from __future__ import annotations

import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from sd_lora.config.kohya.dataset import DATASET_KEYS
from sd_lora.config.sources import looks_like_path
from sd_lora.errors import SdLoraError

__all__ = ["Arg", "KOHYA_ARGS", "KOHYA_SAMPLERS", "SCRIPTS", "Translation", "translate_args", "to_toml"]


@dataclass(frozen=True)
class Arg:
    target: str | None = None  # "section.key"
    convert: Callable[[Any], Any] | None = None  # kohya value -> sd-lora value; may raise ValueError(reason)
    refused: str | None = None  # why it cannot be honoured (and what to use)
    ignored: str | None = None  # why it changes nothing here
    flag: bool = False  # store_true in kohya (no value on the command line)


def _choice(mapping: dict[str, Any], what: str) -> Callable[[Any], Any]:
    def convert(v):
        key = str(v).lower()
        if key not in mapping:
            raise ValueError(f"{what} {v!r} is not supported; sd-lora has {', '.join(sorted(set(map(str, mapping))))}")
        return mapping[key]
    return convert


def _float_or_none(v):
    return None if v in (None, "None", "") else float(v)


OPTIMIZERS = {"adamw": "adamw", "adamw8bit": "adamw8bit", "prodigy": "prodigy", "adafactor": "adafactor",
              "lion": "lion", "adamwschedulefree": "adamw_schedulefree", "came": "came"}
SCHEDULES = {s: s for s in ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                            "polynomial")}
# kohya's --sample_sampler / --ss names -> sd-lora's scheduler names (sd_lora.inference.schedulers)
KOHYA_SAMPLERS = {"ddim": "DDIM", "ddpm": "DDPM", "pndm": "PNDM", "euler": "Euler", "k_euler": "Euler",
                  "euler_a": "Euler a", "k_euler_a": "Euler a", "dpmsolver++": "DPM++ 2M", "heun": "Heun",
                  "lms": None, "k_lms": None, "dpmsolver": None, "dpmsingle": None, "dpm_2": None, "k_dpm_2": None,
                  "dpm_2_a": None, "k_dpm_2_a": None}


def _sampler(v):
    name = str(v).lower()
    if name not in KOHYA_SAMPLERS:
        raise ValueError(f"kohya has no sampler {v!r}")
    if KOHYA_SAMPLERS[name] is None:
        raise ValueError(f"sampler {v!r} is not available in sd-lora; use one of "
                         f"{', '.join(k for k, s in KOHYA_SAMPLERS.items() if s)}")
    return KOHYA_SAMPLERS[name]


def _resolution(v):
    parts = [int(p) for p in str(v).replace("[", "").replace("]", "").split(",")] if not isinstance(v, int) else [v]
    if len(parts) == 2 and parts[0] != parts[1]:
        raise ValueError("a non-square resolution is not supported: sd-lora trains a square resolution (with "
                         "buckets, resolution² is the pixel budget); give one number")
    return parts[0]


def _save_precision(v):
    return _choice({"fp16": "fp16", "bf16": "bf16", "float": "fp32"}, "save_precision")(v)


def _save_as(v):
    if str(v).lower() != "safetensors":
        raise ValueError("sd-lora writes .safetensors only (never pickle); remove --save_model_as or use "
                         "safetensors")
    return None


def _mixed(v):
    return _choice({"no": "no", "fp16": "fp16", "bf16": "bf16"}, "mixed_precision")(v)


def _log_with(v):
    return _choice({"tensorboard": "tensorboard", "wandb": "wandb"}, "log_with")(v)


def _loss(v):
    return _choice({"l2": "l2", "huber": "huber", "smooth_l1": "smooth_l1"}, "loss_type")(v)


_IGN_LOG = "logging/tracker naming; sd-lora writes its logs to output.dir/logs"
_IGN_MEM = "a memory/loading option of kohya's loop; sd-lora manages this itself"
_IGN_HUB = "uploads to the Hugging Face hub are not part of sd-lora train"
_IGN_META = "sd-lora always writes its metadata (ss_* keys, modelspec, hashes)"


def _refuse(why: str) -> Arg:
    return Arg(refused=why)


def _ignore(why: str, flag: bool = False) -> Arg:
    return Arg(ignored=why, flag=flag)


KOHYA_ARGS: dict[str, Arg] = {
    # model
    "pretrained_model_name_or_path": Arg("model.pretrained"),
    "v2": Arg("model.family", lambda v: "sd2", flag=True),
    "v_parameterization": Arg("model.prediction_type", lambda v: "v_prediction", flag=True),
    "tokenizer_cache_dir": _ignore("sd-lora loads the tokenizer saved with the model"),
    "vae": _refuse("a separate VAE is not supported; save the model with the VAE you want (e.g. a diffusers "
                   "folder with that vae/) and point model.pretrained at it"),
    "no_half_vae": _ignore("sd-lora always runs the VAE in fp32", flag=True),
    "lowram": _ignore(_IGN_MEM, flag=True), "highvram": _ignore(_IGN_MEM, flag=True),
    "disable_mmap_load_safetensors": _ignore(_IGN_MEM, flag=True),
    "fp8_base": _refuse("fp8 base weights are not supported; use model.quantize = 'nf4' or 'int8' (CUDA)"),
    "fp8_base_unet": _refuse("fp8 base weights are not supported; use model.quantize = 'nf4' or 'int8' (CUDA)"),
    # network
    "network_module": Arg("network.type", lambda v: _network_module(v)),
    "network_dim": Arg("network.rank", int),
    "network_alpha": Arg("network.alpha", float),
    "network_dropout": Arg("network.dropout", float),
    "network_args": Arg(None),  # handled by _network_args
    "network_weights": Arg("network.init_weights"),
    "dim_from_weights": Arg("network.dim_from_weights", lambda v: True, flag=True),
    "network_train_unet_only": Arg("network.train_text_encoder", lambda v: False, flag=True),
    "network_train_text_encoder_only": _refuse("training only the text encoder is not supported; sd-lora always "
                                               "trains the UNet adapters"),
    "base_weights": _refuse("merging other LoRAs into the base first is not supported here; bake them into a "
                            "model with `sd-lora bake` and train on that"),
    "base_weights_multiplier": _refuse("see base_weights"),
    "scale_weight_norms": _refuse("max-norm regularisation is not supported; remove it"),
    "training_comment": _ignore("sd-lora records the resolved config instead"),
    "no_metadata": _refuse("sd-lora always writes metadata (the tools that read LoRA files need it)"),
    "cpu_offload_checkpointing": _refuse("not supported; use train.gradient_checkpointing"),
    # optimiser and schedule
    "optimizer_type": Arg("train.optimizer", lambda v: _choice(OPTIMIZERS, "optimizer_type")(v)),
    "use_8bit_adam": Arg("train.optimizer", lambda v: "adamw8bit", flag=True),
    "use_lion_optimizer": Arg("train.optimizer", lambda v: "lion", flag=True),
    "optimizer_args": Arg(None),  # handled by _optimizer_args
    "learning_rate": Arg("train.learning_rate", float),
    "unet_lr": Arg("train.unet_lr", _float_or_none),
    "text_encoder_lr": Arg("train.text_encoder_lr", lambda v: _one_value(v, "text_encoder_lr")),
    "max_grad_norm": Arg("train.max_grad_norm", float),
    "lr_scheduler": Arg("train.lr_scheduler", lambda v: _choice(SCHEDULES, "lr_scheduler")(v)),
    "lr_warmup_steps": Arg("train.lr_warmup_steps"),  # an int, or a fraction of the steps (resolved later)
    "lr_scheduler_num_cycles": Arg("train.lr_scheduler_num_cycles", int),
    "lr_scheduler_power": Arg("train.lr_scheduler_power", float),
    "lr_scheduler_type": _refuse("custom scheduler classes are not supported; use train.lr_scheduler"),
    "lr_scheduler_args": _refuse("custom scheduler arguments are not supported; use train.lr_scheduler"),
    "lr_decay_steps": _refuse("warmup-stable-decay schedules are not supported; use train.lr_scheduler"),
    "lr_scheduler_timescale": _refuse("not supported; use train.lr_scheduler"),
    "lr_scheduler_min_lr_ratio": _refuse("not supported; use train.lr_scheduler"),
    "fused_backward_pass": _refuse("not supported; use train.optimizer = 'adafactor' as is"),
    "loraplus_lr_ratio": Arg("train.loraplus_lr_ratio", float),
    # run length, batches, precision
    "train_batch_size": Arg("train.batch_size", int),
    "max_train_steps": Arg("train.max_steps", int),
    "max_train_epochs": Arg("train.max_epochs", int),
    "gradient_accumulation_steps": Arg("train.gradient_accumulation_steps", int),
    "gradient_checkpointing": Arg("train.gradient_checkpointing", lambda v: True, flag=True),
    "mixed_precision": Arg("train.mixed_precision", _mixed),
    "full_fp16": _refuse("sd-lora keeps adapter weights in fp32 under mixed precision; remove it"),
    "full_bf16": _refuse("sd-lora keeps adapter weights in fp32 under mixed precision; remove it"),
    "seed": Arg("train.seed", int),
    "clip_skip": Arg("train.clip_skip", int),
    "max_token_length": Arg("data.max_token_length", int),
    "xformers": Arg("train.attention", lambda v: "xformers", flag=True),
    "sdpa": Arg("train.attention", lambda v: "sdpa", flag=True),
    "mem_eff_attn": Arg("train.attention", lambda v: "sdpa", flag=True),
    "torch_compile": Arg("train.compile", lambda v: True, flag=True),
    "dynamo_backend": _ignore("torch.compile uses its default backend (inductor)"),
    "max_data_loader_n_workers": Arg("data.num_workers", int),
    "persistent_data_loader_workers": _ignore(_IGN_MEM, flag=True),
    "blocks_to_swap": _refuse("block swapping is not supported; use train.gradient_checkpointing or a smaller "
                              "resolution"),
    "deepspeed": _refuse("DeepSpeed is not supported; run under `accelerate launch` (DDP) instead"),
    "ddp_timeout": _ignore("set by accelerate's own configuration"),
    "ddp_gradient_as_bucket_view": _ignore("set by accelerate's own configuration", flag=True),
    "ddp_static_graph": _ignore("set by accelerate's own configuration", flag=True),
    # loss and noise
    "prior_loss_weight": Arg("data.prior_loss_weight", float),
    "min_snr_gamma": Arg("train.min_snr_gamma", float),
    "debiased_estimation_loss": Arg("train.debiased_estimation_loss", lambda v: True, flag=True),
    "noise_offset": Arg("train.noise_offset", float),
    "multires_noise_iterations": Arg("train.multires_noise_iterations", int),
    "multires_noise_discount": Arg("train.multires_noise_discount", float),
    "ip_noise_gamma": Arg("train.ip_noise_gamma", float),
    "zero_terminal_snr": Arg("train.zero_terminal_snr", lambda v: True, flag=True),
    "min_timestep": Arg("train.min_timestep", int),
    "max_timestep": Arg("train.max_timestep", int),
    "loss_type": Arg("train.loss_type", _loss),
    "huber_schedule": Arg("train.huber_schedule", lambda v: _choice(
        {"constant": "constant", "exponential": "exponential", "snr": "snr"}, "huber_schedule")(v)),
    "huber_c": Arg("train.huber_c", float),
    "huber_scale": Arg(),  # refused unless 1 (in _translate_one)
    "noise_offset_random_strength": _refuse("random noise-offset strength is not supported; use train.noise_offset"),
    "ip_noise_gamma_random_strength": _refuse("random strength is not supported; use train.ip_noise_gamma"),
    "adaptive_noise_scale": _refuse("adaptive noise scale is not supported; use train.noise_offset"),
    "scale_v_pred_loss_like_noise_pred": _refuse("not supported; use train.min_snr_gamma or "
                                                 "train.debiased_estimation_loss"),
    "v_pred_like_loss": _refuse("not supported; use train.min_snr_gamma"),
    "weighted_captions": _refuse("weighted captions ((word:1.2)) are not supported in training captions"),
    "masked_loss": Arg(),  # needs alpha_mask (in _translate_one)
    # output and saving
    "output_dir": Arg("output.dir"),
    "output_name": Arg("output.name"),
    "save_precision": Arg("output.save_precision", _save_precision),
    "save_model_as": Arg(None, _save_as),
    "use_safetensors": _ignore("sd-lora always writes safetensors", flag=True),
    "save_every_n_epochs": Arg("output.save_every_n_epochs", int),
    "save_every_n_steps": Arg("output.save_every_n_steps", int),
    "save_last_n_epochs": Arg("output.save_last_n", int),
    "save_last_n_steps": _refuse("kohya keeps the saves of the last N steps; sd-lora keeps the last N files: use "
                                 "output.save_last_n"),
    "save_last_n_epochs_state": _ignore("states are pruned with output.save_last_n"),
    "save_last_n_steps_state": _ignore("states are pruned with output.save_last_n"),
    "save_n_epoch_ratio": _refuse("not supported; use output.save_every_n_epochs"),
    "save_state": _ignore("sd-lora saves a resumable state with every intermediate save", flag=True),
    "save_state_on_train_end": Arg("output.save_state_at_end", lambda v: True, flag=True),
    "resume": _refuse("kohya's saved states cannot be resumed by sd-lora; continue from the LoRA file instead "
                      "with --network_weights (network.init_weights)"),
    "skip_until_initial_step": _refuse("not supported; continue from the LoRA file with network.init_weights"),
    "initial_epoch": _refuse("not supported; continue from the LoRA file with network.init_weights"),
    "initial_step": _refuse("not supported; continue from the LoRA file with network.init_weights"),
    "logging_dir": _ignore(_IGN_LOG), "log_with": Arg("output.log_with", _log_with),
    "log_prefix": _ignore(_IGN_LOG), "log_tracker_name": _ignore(_IGN_LOG), "wandb_run_name": _ignore(_IGN_LOG),
    "log_tracker_config": _ignore(_IGN_LOG), "wandb_api_key": _ignore("use `wandb login` or WANDB_API_KEY"),
    "log_config": _ignore("the resolved config is saved beside the adapter", flag=True),
    "output_config": _refuse("use `sd-lora from-kohya ... --out config.toml` to write a config"),
    "huggingface_repo_id": _ignore(_IGN_HUB), "huggingface_repo_type": _ignore(_IGN_HUB),
    "huggingface_path_in_repo": _ignore(_IGN_HUB), "huggingface_token": _ignore(_IGN_HUB),
    "huggingface_repo_visibility": _ignore(_IGN_HUB), "save_state_to_huggingface": _ignore(_IGN_HUB, flag=True),
    "resume_from_huggingface": _refuse(_IGN_HUB), "async_upload": _ignore(_IGN_HUB, flag=True),
    **{k: _ignore(_IGN_META) for k in ("metadata_title", "metadata_author", "metadata_description",
                                       "metadata_license", "metadata_tags", "metadata_usage_hint",
                                       "metadata_thumbnail", "metadata_merged_from", "metadata_trigger_phrase",
                                       "metadata_preprocessor")},
    # samples
    "sample_every_n_steps": Arg("sample.every_n_steps", int),
    "sample_every_n_epochs": _refuse("not supported; use sample.every_n_steps"),
    "sample_at_first": _ignore("sd-lora samples every N steps and at the end", flag=True),
    "sample_prompts": Arg("sample.prompts"),  # a file: read into the list (in _translate_one)
    "sample_sampler": Arg("sample.scheduler", _sampler),
    # data
    "train_data_dir": Arg("data.dir"),
    "reg_data_dir": Arg("data.reg_data_dir"),
    "in_json": Arg("data.metadata_file"),
    "dataset_repeats": Arg("data.num_repeats", int),
    "dataset_config": Arg("data.config"),
    "dataset_class": _refuse("custom dataset classes are not supported"),
    "resolution": Arg("data.resolution", _resolution),
    "cache_latents": Arg("data.cache_latents", lambda v: True, flag=True),
    "cache_latents_to_disk": Arg("data.cache_latents_to_disk", lambda v: True, flag=True),
    "cache_text_encoder_outputs": Arg("data.cache_text_encoder_outputs", lambda v: True, flag=True),
    "cache_text_encoder_outputs_to_disk": Arg("data.cache_text_encoder_outputs_to_disk", lambda v: True, flag=True),
    "vae_batch_size": _ignore(_IGN_MEM), "text_encoder_batch_size": _ignore(_IGN_MEM),
    "skip_cache_check": _ignore(_IGN_MEM, flag=True),
    "debug_dataset": _ignore("use `sd-lora train --dry-run` to see the dataset plan", flag=True),
    "caption_extention": Arg("data.caption_extension"),  # kohya's old misspelt alias
    "conditioning_data_dir": _refuse("ControlNet datasets are not trained by sd-lora; for masks use data.mask_dir"),
    "validation_split": Arg("data.validation_split", float),
    "validation_seed": _ignore("sd-lora picks the held-out images with train.seed"),
    "validate_every_n_steps": Arg("data.validation_every_n_steps", int),
    "validate_every_n_epochs": _refuse("not supported; use data.validation_every_n_steps"),
    "max_validation_steps": _ignore("sd-lora evaluates the whole validation set"),
    "config_file": Arg(None),  # read by translate_args
}
_KIND = {int: int, float: float, (int, float): float}
# dataset options on the command line: the same keys as in a dataset config, set on [data]
for _name, _key in DATASET_KEYS.items():
    if _name in KOHYA_ARGS or _name in ("image_dir", "is_reg", "metadata_file", "batch_size", "num_repeats",
                                        "class_tokens", "conditioning_data_dir", "custom_attributes"):
        continue
    if _key.target:
        KOHYA_ARGS[_name] = Arg("data." + _key.target.split(".", 1)[1], _KIND.get(_key.kind), flag=_key.kind is bool)
    else:
        KOHYA_ARGS[_name] = Arg(refused=None, ignored=_key.ignored, flag=_key.kind is bool,
                                convert=_key.refuse and (lambda v, f=_key.refuse: _raise_if(f(v), v)))

# script -> the model family it trains (the SD3/FLUX scripts come with those families)
SCRIPTS = {"train_network.py": None, "sdxl_train_network.py": "sdxl"}


def _raise_if(reason, value):
    if reason:
        raise ValueError(reason)
    return value


def _one_value(v, name):
    values = v if isinstance(v, list) else str(v).split()
    if len({float(x) for x in values}) > 1:
        raise ValueError(f"{name}: one learning rate for the text encoders is supported, got {values}")
    return float(values[0])


def _network_module(v):
    if v == "networks.lora":
        return "lora"
    if v == "lycoris.kohya":
        return "lycoris"  # the algo in network_args decides (see _network_args)
    raise ValueError(f"network module {v!r} is not supported; sd-lora trains networks.lora (LoRA/LoCon) and "
                     "lycoris.kohya with algo lora/locon/loha/lokr")


@dataclass
class Translation:
    """An sd-lora config tree from kohya options, and what was dropped (kohya option -> why)."""

    config: dict[str, dict[str, Any]] = field(default_factory=dict)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    mapped: list[tuple[str, str]] = field(default_factory=list)  # (kohya option, sd-lora key)


def _parse_command_line(argv: list[str]) -> tuple[str | None, list[tuple[str, Any]], list[str]]:
    """[script] --opt value ... -> (script, [(name, value)], problems); flags get True, nargs options a list."""
    script, pairs, problems = None, [], []
    items = list(argv)
    scripts = [i for i, w in enumerate(items) if w.endswith(".py")]
    if scripts:  # `accelerate launch --its_options ... train_network.py`: the launcher's options are not kohya's
        items = items[scripts[0]:]
    while items and not items[0].startswith("--"):
        word = items.pop(0)
        name = Path(word).name
        if name in SCRIPTS or name.endswith(".py"):
            script = name
        elif name not in ("accelerate", "launch", "python", "python3") and not word.startswith("-"):
            problems.append(f"{word!r}: expected a kohya option (--name value) here")
    i = 0
    while i < len(items):
        word = items[i]
        if not word.startswith("--"):
            problems.append(f"{word!r}: a value without an option before it")
            i += 1
            continue
        name, eq, inline = word[2:].partition("=")
        i += 1
        values = [inline] if eq else []
        while not eq and i < len(items) and not items[i].startswith("--"):
            values.append(items[i])
            i += 1
        spec = KOHYA_ARGS.get(name)
        if spec is not None and spec.flag and not values:
            pairs.append((name, True))
        elif name in ("network_args", "optimizer_args", "text_encoder_lr"):
            pairs.append((name, values))
        else:
            pairs.append((name, values[0] if len(values) == 1 else values))
    if script is not None and script not in SCRIPTS:
        problems.append(f"{script}: not a LoRA training script sd-lora translates ({', '.join(SCRIPTS)})")
    return script, pairs, problems


def _read_config_file(path: Path) -> list[tuple[str, Any]]:
    """kohya's --config_file: a TOML whose tables only group options (their names are ignored, as in kohya)."""
    path = path if path.suffix == ".toml" else path.with_name(path.name + ".toml")
    try:
        tree = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise SdLoraError(f"--config_file {path}: cannot read it ({e.strerror or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise SdLoraError(f"--config_file {path}: not valid TOML: {e}") from None

    def flat(node):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from flat(value)
            else:
                yield key, value
    return list(flat(tree))


def translate_args(argv: list[str] | str, base_dir: Path | None = None) -> Translation:
    """Translate a kohya command line (a string or its words; the script name may lead) into an sd-lora
    config tree. Options on the command line override those of its --config_file, as in kohya."""
    words = shlex.split(argv) if isinstance(argv, str) else list(argv)
    base_dir = base_dir or Path.cwd()
    script, pairs, problems = _parse_command_line(words)
    config_files = [v for k, v in pairs if k == "config_file"]
    if config_files:
        file_pairs = _read_config_file(base_dir / str(config_files[-1]))
        given = {k for k, _ in pairs}
        pairs = [(k, v) for k, v in file_pairs if k not in given] + [(k, v) for k, v in pairs if k != "config_file"]
    out = Translation()
    if SCRIPTS.get(script):
        _put(out, "model.family", SCRIPTS[script], script, problems)
    values = dict(pairs)
    for name, value in pairs:
        _translate_one(name, value, values, out, problems, base_dir)
    _after(out, values, problems, base_dir)
    if problems:
        raise SdLoraError(f"{len(problems)} kohya option(s) cannot be carried over:\n"
                          + "\n".join(f"  - {p}" for p in problems))
    return out


def _put(out: Translation, target: str, value, source: str, problems: list[str]) -> None:
    section, key = target.split(".", 1)
    before = out.config.get(section, {}).get(key)
    if before is not None and before != value and not source.startswith("network_args"):
        problems.append(f"{source}: sets {target} = {value!r}, but another option already set it to {before!r}")
        return
    out.config.setdefault(section, {})[key] = value
    out.mapped.append((source, target))


def _translate_one(name: str, value, values: dict, out: Translation, problems: list[str], base_dir: Path) -> None:
    spec = KOHYA_ARGS.get(name)
    if spec is None:
        import difflib

        close = difflib.get_close_matches(name, list(KOHYA_ARGS), n=1, cutoff=0.75)
        problems.append(f"--{name}: not an option of kohya's LoRA training scripts"
                        + (f"; did you mean --{close[0]}?" if close else ""))
        return
    if spec.refused:
        problems.append(f"--{name}: {spec.refused}")
        return
    if spec.flag and value is False:  # `flag = false` in a --config_file
        return
    try:
        if name == "network_args":
            _network_args(value, values, out, problems)
            return
        if name == "optimizer_args":
            _optimizer_args(value, out, problems)
            return
        if name == "huber_scale":
            if float(value) != 1.0:
                problems.append("--huber_scale: not supported; sd-lora uses train.huber_c as is")
            return
        if name == "masked_loss":
            if not values.get("alpha_mask"):
                problems.append("--masked_loss: kohya reads masks from conditioning images; in sd-lora use "
                                "data.mask_dir (same-stem grayscale masks) or --alpha_mask")
            return
        if name == "sample_prompts":
            _put(out, "sample.prompts", _read_prompts(base_dir / str(value)), name, problems)
            return
        converted = spec.convert(value) if spec.convert else value
    except ValueError as e:
        problems.append(f"--{name} {value!r}: {e}")
        return
    if spec.ignored:
        out.ignored.append((name, spec.ignored))
    elif spec.target:
        if converted == "lycoris":
            return  # the type comes from network_args algo
        _put(out, spec.target, converted, name, problems)


def _read_prompts(path: Path) -> list[str]:
    """kohya's --sample_prompts .txt file: one prompt per line (its --n/--w/... options stay in the line)."""
    if path.suffix.lower() != ".txt":
        raise ValueError("only a .txt prompt file (one prompt a line) is carried over; list the prompts in "
                         "sample.prompts")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except OSError as e:
        raise ValueError(f"cannot read it ({e.strerror or e})") from None
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


_ALGOS = {"lora": "lora", "locon": "lora", "loha": "loha", "lokr": "lokr"}


def _list25(text: str, name: str, kind=float) -> list:
    values = [kind(float(x)) if kind is int else kind(x) for x in str(text).split(",")]
    if len(values) != 25:
        raise ValueError(f"{name} needs 25 values for SD1/SD2 (kohya's order), got {len(values)}")
    return values


def _network_args(items, values: dict, out: Translation, problems: list[str]) -> None:
    module = values.get("network_module", "networks.lora")
    args = {}
    for item in items if isinstance(items, list) else [items]:
        key, eq, value = str(item).partition("=")
        if not eq:
            problems.append(f"--network_args {item!r}: expected key=value")
            continue
        args[key.strip()] = value.strip()
    lr_parts = {k: args.pop(k) for k in ("down_lr_weight", "mid_lr_weight", "up_lr_weight") if k in args}
    for key, value in args.items():
        where = f"network_args {key}"
        try:
            if key == "algo" and module == "lycoris.kohya":
                if value not in _ALGOS:
                    raise ValueError(f"algo {value!r} is not supported; sd-lora trains lora/locon, loha and lokr")
                _put(out, "network.type", _ALGOS[value], where, problems)
                if value == "locon":
                    _put(out, "network.preset", "full", where, problems)
            elif key == "conv_dim":
                _put(out, "network.conv_rank", int(value), where, problems)
                _put(out, "network.preset", "full", where, problems)
            elif key == "conv_alpha":
                _put(out, "network.conv_alpha", float(value), where, problems)
            elif key in ("rank_dropout", "module_dropout"):
                _put(out, f"network.{key}", float(value), where, problems)
            elif key == "dropout" and module == "lycoris.kohya":
                _put(out, "network.dropout", float(value), where, problems)
            elif key in ("block_dims", "conv_block_dims"):
                _put(out, f"network.{key}", _list25(value, key, int), where, problems)
            elif key in ("block_alphas", "conv_block_alphas"):
                _put(out, f"network.{key}", _list25(value, key), where, problems)
            elif key == "loraplus_lr_ratio":
                _put(out, "train.loraplus_lr_ratio", float(value), where, problems)
            elif key == "dora_wd" and module == "lycoris.kohya":
                _put(out, "network.dora", value.lower() in ("true", "1"), where, problems)
            elif key == "factor" and module == "lycoris.kohya":
                _put(out, "network.lokr_factor", int(value), where, problems)
            elif key == "preset" and module == "lycoris.kohya":
                if value not in ("attn-mlp", "full", "attn-only"):
                    raise ValueError(f"LyCORIS preset {value!r} is not supported; use network.preset (attn, "
                                     "attn-mlp, full)")
                _put(out, "network.preset", {"attn-only": "attn"}.get(value, value), where, problems)
            else:
                raise ValueError("not supported by sd-lora's network options (see docs/kohya.md)")
        except ValueError as e:
            problems.append(f"--network_args {key}={value}: {e}")
    if lr_parts:
        try:
            if set(lr_parts) != {"down_lr_weight", "mid_lr_weight", "up_lr_weight"}:
                raise ValueError("give all three of down_lr_weight, mid_lr_weight and up_lr_weight as numbers")
            down = [float(x) for x in lr_parts["down_lr_weight"].split(",")]
            mid = [float(lr_parts["mid_lr_weight"])]
            up = [float(x) for x in lr_parts["up_lr_weight"].split(",")]
            if len(down) != 12 or len(up) != 12:
                raise ValueError("down_lr_weight and up_lr_weight need 12 values each")
            _put(out, "network.block_lr_weights", down + mid + up, "network_args block lr weights", problems)
        except ValueError as e:
            problems.append(f"--network_args down/mid/up_lr_weight: {e} (kohya's presets such as 'sine' are "
                            "not supported)")


def _optimizer_args(items, out: Translation, problems: list[str]) -> None:
    for item in items if isinstance(items, list) else [items]:
        key, eq, value = str(item).partition("=")
        if key.strip() == "weight_decay" and eq:
            try:
                _put(out, "train.weight_decay", float(value), "optimizer_args weight_decay", problems)
            except ValueError:
                problems.append(f"--optimizer_args {item!r}: weight_decay must be a number")
        else:
            problems.append(f"--optimizer_args {item!r}: only weight_decay is carried over; sd-lora sets the other "
                            "optimiser arguments itself (see docs/kohya.md)")


# kohya resolves relative paths against the working directory; the written config holds them absolute
_PATH_KEYS = ("model.pretrained", "data.dir", "data.reg_data_dir", "data.metadata_file", "data.config",
              "network.init_weights", "output.dir")


def _after(out: Translation, values: dict, problems: list[str], base_dir: Path) -> None:
    """Rules across options: kohya's defaults where they differ from sd-lora's, and fractional warmup."""
    train = out.config.setdefault("train", {})
    network = out.config.setdefault("network", {})
    data = out.config.setdefault("data", {})
    warmup = train.get("lr_warmup_steps")
    if warmup is not None:
        try:
            value = float(warmup)
        except ValueError:
            problems.append(f"--lr_warmup_steps {warmup!r}: expected a number")
            value = 0
        if 0 < value < 1:
            if "max_steps" not in train:
                problems.append("--lr_warmup_steps: a fraction of the steps needs --max_train_steps; give a step count")
            else:
                train["lr_warmup_steps"] = math.ceil(value * train["max_steps"])
        else:
            train["lr_warmup_steps"] = int(value)
    # kohya's defaults that differ from sd-lora's: written out so the run matches
    defaults = [("network", "rank", 4, "network_dim"), ("network", "alpha", 1.0, "network_alpha"),
                ("train", "learning_rate", 2e-6, "learning_rate"), ("train", "max_steps", 1600, "max_train_steps"),
                ("output", "save_precision", "fp32", "save_precision"), ("output", "name", "last", "output_name")]
    if "dir" in data or "metadata_file" in data:
        defaults.append(("data", "caption_extension", ".caption", "caption_extension"))
    for section, key, default, name in defaults:
        if key not in out.config.setdefault(section, {}) and not (key == "max_steps" and "max_epochs" in train):
            out.config[section][key] = default
            out.ignored.append((name, f"not given: kohya's default {default!r} is written as {section}.{key}"))
    if "preset" not in network:  # kohya's LoRA adapts attention, feed-forward and proj_in/out (+ CLIP MLPs)
        network["preset"] = "attn-mlp"
    for target in _PATH_KEYS:
        section, key = target.split(".")
        value = out.config.get(section, {}).get(key)
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute() and (
                target != "model.pretrained" or looks_like_path(value, base_dir)):
            out.config[section][key] = str((base_dir / Path(value).expanduser()).resolve())
    if "network.train_text_encoder" not in {t for _, t in out.mapped}:
        network["train_text_encoder"] = True  # kohya trains the text encoder unless network_train_unet_only
    if values.get("network_module") == "lycoris.kohya" and "type" not in network:
        problems.append("--network_module lycoris.kohya: give its algo in --network_args (algo=locon/loha/lokr)")
    if "resolution" not in data and "config" not in data:  # a dataset config sets its own
        data["resolution"] = 1024 if out.config.get("model", {}).get("family") == "sdxl" else 512
    if "data.config" in {t for _, t in out.mapped} and "data.dir" in {t for _, t in out.mapped}:
        out.ignored.append(("train_data_dir", "ignored with --dataset_config, as in kohya"))
        del data["dir"]
    for section in [s for s, v in out.config.items() if not v]:
        del out.config[section]


def to_toml(translation: Translation, header: str = "") -> str:
    """The translated config as TOML, the dropped options as comments at the top."""
    from sd_lora.config.load import _toml_value

    lines = [f"# {line}" for line in header.splitlines()]
    if translation.ignored:
        lines.append("# kohya options not carried over (they change nothing trained here), and kohya defaults written out:")
        lines += [f"#   --{name}: {why}" for name, why in translation.ignored]
    for section, values in translation.config.items():
        lines.append(f"\n[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()
                  if v is not None and not isinstance(v, dict)]
    return "\n".join(lines).lstrip("\n") + "\n"
