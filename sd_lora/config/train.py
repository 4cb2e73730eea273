"""The `[train]` (loop, optimiser, schedule, loss, resume) and `[sample]` config sections."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from sd_lora.config.fields import finite_first
from sd_lora.config.fields import option as _f

__all__ = ["TrainConfig", "SampleConfig", "OPTIMIZERS", "LR_SCHEDULERS"]

OPTIMIZERS = ("adamw", "adamw8bit", "prodigy", "adafactor", "lion", "adamw_schedulefree", "came")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
# above it the SD3 paper's mode mapping f(u) = 1 - u - s·(cos²(πu/2) - 1 + u) stops being monotonic
_MODE_SCALE_MAX = 2 / (math.pi - 2)


@dataclass
class TrainConfig:
    max_steps: int = _f(1000, "Optimiser steps to train for (ignored when max_epochs is set).", resume="free")
    max_epochs: int | None = _f(None, "Train for this many passes over the data instead of max_steps.", resume="free")
    batch_size: int = _f(1, "Images per step per process (before gradient accumulation).")
    gradient_accumulation_steps: int = _f(1, "Micro-batches accumulated into one optimiser step.", resume="free")
    optimizer: Literal["adamw", "adamw8bit", "prodigy", "adafactor", "lion", "adamw_schedulefree", "came"] = _f(
        "adamw", "adamw (torch), adamw8bit (bitsandbytes, CUDA), prodigy (prodigyopt), adafactor (transformers), "
        "lion (lion-pytorch; use ~3-10x lower lr), adamw_schedulefree (schedulefree; no LR decay needed), "
        "came (came-pytorch).")
    learning_rate: float = _f(1e-4, "Learning rate (for prodigy use 1.0: it adapts the step size itself).", resume="free")
    unet_lr: float | None = _f(None, "Learning rate of the UNet adapters (default: learning_rate).", resume="free")
    text_encoder_lr: float | None = _f(None, "Learning rate of the text-encoder adapters (default: learning_rate).", resume="free")
    loraplus_lr_ratio: float | None = _f(None, "LoRA+: B matrices learn this many times faster than A (e.g. 16).", resume="free")
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                          "polynomial"] = _f("constant", "Learning-rate schedule (diffusers' get_scheduler). "
                                                         "constant with lr_warmup_steps > 0 warms up first.", resume="free")
    lr_warmup_steps: int = _f(0, "Linear warmup steps from 0 to the learning rate.", resume="free")
    lr_scheduler_num_cycles: int = _f(1, "cosine_with_restarts: number of hard restarts.", resume="free")
    lr_scheduler_power: float = _f(1.0, "polynomial: power of the decay.", resume="free")
    weight_decay: float = _f(1e-2, "Weight decay.", resume="free")
    max_grad_norm: float = _f(1.0, "Clip the gradient norm to this value (0 disables clipping).", resume="free")
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = _f(
        "auto", "Mixed precision: the frozen base runs in this dtype, adapter weights stay fp32. 'auto': bf16 where "
        "the hardware runs it natively (CUDA compute capability >= 8.0, CPUs with AMX-BF16 or AVX-512 BF16), fp16 "
        "with loss scaling on older GPUs, fp32 ('no') otherwise; the plan says which and why.")
    gradient_checkpointing: bool | Literal["auto"] = _f(
        "auto", "Recompute activations in backward to save memory. 'auto': on when the estimated activation memory "
        "would not fit the device's free memory (the plan says why).", resume="free")
    fused_backward: bool = _f(
        False, "Apply the optimiser step to each parameter as soon as its gradient is ready, during backward, so "
        "gradients never all exist at once (kohya / OneTrainer's fused backward pass). Needs "
        "gradient_accumulation_steps = 1, max_grad_norm = 0, one process and a per-parameter optimiser (adamw, "
        "adamw8bit, adafactor, lion).", resume="free")
    attention: Literal["sdpa", "xformers"] = _f("sdpa", "Attention kernel: PyTorch SDPA or xformers (needs the extra).", resume="free")
    seed: int = _f(42, "Seed for adapter init, data order, noise and timesteps.")
    loss_type: Literal["l2", "huber", "smooth_l1"] = _f("l2", "Loss between prediction and target.")
    huber_c: float = _f(0.1, "huber / smooth_l1: the threshold between the quadratic and linear parts.")
    min_snr_gamma: float | None = _f(None, "Min-SNR weighting gamma (5 is common); off when unset.")
    noise_offset: float = _f(0.0, "Add this much per-channel offset noise (helps very dark/bright images).")
    zero_terminal_snr: bool = _f(False, "Rescale the noise schedule to zero SNR at the last timestep.")
    multires_noise_iterations: int = _f(0, "Multi-resolution (pyramid) noise: add this many upscaled noise levels "
                                           "(kohya; 6-10 is common; 0: off).")
    multires_noise_discount: float = _f(0.3, "Multi-resolution noise: weight of level i is discount**i.")
    ip_noise_gamma: float = _f(0.0, "Input perturbation: the UNet input is noised with noise + gamma * extra noise, "
                                    "the target stays the plain noise (0.1 is common; 0: off).")
    debiased_estimation_loss: bool = _f(False, "Debiased estimation: weigh the loss by 1/sqrt(SNR) (v-prediction: "
                                               "1/(SNR+1)), SNR capped at 1000.")
    huber_schedule: Literal["constant", "exponential", "snr"] = _f(
        "constant", "huber / smooth_l1: huber_c per timestep, constant, exponential (exp(-ln(1/c)·t/T)) or snr "
        "((1 - c)/(1 + sigma_t)² + c), as kohya defines them.")
    ema_decay: float | None = _f(None, "Keep an exponential moving average of the adapter weights (fp32, e.g. 0.999); "
                                       "samples and the exported files use it. Off when unset.")
    clip_skip: int | None = _f(None, "Train on the text encoder's N-th layer from the end (1 = last, 2 = penultimate, "
                                     "AUTOMATIC1111's count); samples and generate use it too. Default: 1.")
    timestep_sampling: Literal["auto", "logit_normal", "mode", "uniform", "sigma_sqrt", "cosmap"] = _f(
        "auto", "Flow-matching families (SD3, FLUX): how training noise levels are drawn. auto: the family's own "
        "(logit_normal, shifted by the model's scheduler: SD3 by 3.0, FLUX by its resolution-dependent shift); "
        "logit_normal (logit_mean, logit_std), mode (mode_scale), uniform; sigma_sqrt and cosmap draw uniformly and "
        "weigh the loss by that name, as diffusers' weighting_scheme does. logit_mean > 0 favours noisier levels "
        "(SD3 paper; diffusers' scripts index their reversed schedule, so there it favours cleaner ones).")
    logit_mean: float = _f(0.0, "timestep_sampling = logit_normal: mean of the normal draw before the sigmoid.")
    logit_std: float = _f(1.0, "timestep_sampling = logit_normal: standard deviation of the normal draw.")
    mode_scale: float = _f(1.29, "timestep_sampling = mode: the SD3 paper's scale s (0: uniform; larger: more "
                                 "mid-range levels), from -1 to 1.75.")
    flow_shift: float | None = _f(
        None, "Flow-matching families: shift the drawn noise levels by this factor (shift·s/(1 + (shift-1)·s), >1: "
        "noisier; kohya's discrete_flow_shift). Default: the model scheduler's (SD3: 3.0; FLUX: by resolution, 3.16 "
        "at 1024 px).")
    loss_weighting: Literal["none", "sigma_sqrt", "cosmap"] = _f(
        "none", "Flow-matching families: per-sample loss weight, as diffusers' compute_loss_weighting_for_sd3: "
        "none, sigma_sqrt (1/sigma²) or cosmap.")
    guidance_scale: float = _f(1.0, "FLUX.1 dev: the distilled-guidance value fed to the model while training "
                                    "(kohya and diffusers use 1). Not classifier-free guidance "
                                    "(see sample.guidance_scale).")
    min_timestep: int = _f(0, "Lowest training timestep (inclusive).")
    max_timestep: int = _f(1000, "Highest training timestep (exclusive).")
    resume: str | None = _f(None, "Resume from 'latest' (newest complete state in output.dir/checkpoints) or a state folder.", resume="free")
    resume_ignore_mismatch: bool = _f(
        False, "With train.resume = a state folder: resume although the state was saved by a run with another dataset, "
        "seed, learning setup or base model (the network's shape must still match).", resume="free")
    log_every_n_steps: int = _f(10, "Log loss, learning rates and speed every N optimiser steps.", resume="free")
    compile: bool = _f(False, "torch.compile the denoiser (UNet or transformer, with its adapters). Compiling takes "
                              "minutes; on a GPU the steps get faster, on the CPU they were slower (docs/benchmarks.md).",
                       resume="free")
    channels_last: bool = _f(False, "Keep the denoiser's convolution weights and inputs in channels-last memory layout "
                                    "(faster convolutions on recent GPUs with fp16/bf16).", resume="free")
    adamw_impl: Literal["auto", "fused", "foreach", "for_loop"] = _f(
        "auto", "torch AdamW kernel: fused (one kernel for all tensors; 'auto' picks it where torch has it, CPU and "
        "CUDA), foreach, or the plain per-tensor loop.", resume="free")
    cpu_allocator_tuning: bool = _f(
        True, "CPU runs on Linux: keep freed activation memory in the process (glibc mmap/trim thresholds) instead "
        "of returning it to the OS and faulting it back every step. No effect on GPUs.", resume="free")
    cpu_threads: int = _f(
        0, "CPU threads for torch's ops. 0: OMP_NUM_THREADS when set, else auto: 1 for a small model (its ops are "
        "too small to split, and a thread waiting for a core another process holds stalls every op), else the "
        "cores other processes leave free. See scripts/benchmark_busy.py.", resume="free")
    blocks_to_swap: int = _f(
        0, "Keep the frozen weights of this many transformer blocks (the last ones) in CPU memory and move each "
        "to the GPU only for its forward and backward, the next one copied ahead: less GPU memory, slower steps, "
        "the same results. 0: off.", resume="free")

    def validate(self) -> list[str]:
        problems = []
        if self.blocks_to_swap < 0:
            problems.append(f"train.blocks_to_swap: must not be negative (0: off), got {self.blocks_to_swap}")
        if self.cpu_threads < 0:
            problems.append(f"train.cpu_threads: must not be negative (0: auto), got {self.cpu_threads}")
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "log_every_n_steps",
                     "lr_scheduler_num_cycles"):
            if getattr(self, name) < 1:
                problems.append(f"train.{name}: must be at least 1, got {getattr(self, name)}")
        if self.max_epochs is not None and self.max_epochs < 1:
            problems.append(f"train.max_epochs: must be at least 1, got {self.max_epochs}")
        if self.clip_skip is not None and not 1 <= self.clip_skip <= 12:
            problems.append(f"train.clip_skip: must be 1 (last layer) to 12, got {self.clip_skip}")
        if self.multires_noise_iterations < 0:
            problems.append(f"train.multires_noise_iterations: must not be negative, got {self.multires_noise_iterations}")
        if not 0.0 < self.multires_noise_discount <= 1.0:
            problems.append(f"train.multires_noise_discount: must be in (0, 1], got {self.multires_noise_discount}")
        if self.ip_noise_gamma < 0:
            problems.append(f"train.ip_noise_gamma: must not be negative, got {self.ip_noise_gamma}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            problems.append(f"train.ema_decay: must be between 0 and 1 (e.g. 0.999), got {self.ema_decay}")
        if self.huber_schedule != "constant" and self.loss_type == "l2":
            problems.append(f"train.huber_schedule = {self.huber_schedule!r} only applies to loss_type 'huber' or "
                            "'smooth_l1'; set train.loss_type, or leave huber_schedule out")
        if self.huber_schedule == "exponential" and not 0 < self.huber_c < 1:
            problems.append(f"train.huber_c: the exponential schedule needs 0 < huber_c < 1, got {self.huber_c}")
        if self.min_snr_gamma and self.debiased_estimation_loss:
            problems.append("train.debiased_estimation_loss: choose it or min_snr_gamma, not both (both reweigh by SNR)")
        for name in ("learning_rate", "unet_lr", "text_encoder_lr", "loraplus_lr_ratio", "huber_c", "min_snr_gamma"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                problems.append(f"train.{name}: must be positive, got {value}")
        for name in ("lr_warmup_steps", "weight_decay", "max_grad_norm", "noise_offset", "min_timestep"):
            if getattr(self, name) < 0:
                problems.append(f"train.{name}: must not be negative, got {getattr(self, name)}")
        if not self.min_timestep < self.max_timestep <= 1000:
            problems.append(f"train.max_timestep: must be > min_timestep ({self.min_timestep}) and <= 1000, "
                            f"got {self.max_timestep}")
        if self.optimizer == "prodigy":
            lrs = {self.unet_lr or self.learning_rate, self.text_encoder_lr or self.learning_rate}
            if len(lrs) > 1 or self.loraplus_lr_ratio not in (None, 1):
                problems.append(
                    "train.optimizer = 'prodigy' takes one learning rate for every parameter group (it adapts the step "
                    "size itself and refuses groups with different lr): remove train.unet_lr / text_encoder_lr / "
                    "loraplus_lr_ratio, or use optimizer = 'adamw' for separate rates")
        problems += self._check_flow()
        problems += _check_fused_backward(self)
        if self.resume_ignore_mismatch and self.resume in (None, "latest"):
            problems.append("train.resume_ignore_mismatch: only with train.resume = a state folder (a path), so that "
                            "'latest' never picks up another run's state; name the folder you mean")
        return finite_first(self, "train", problems)

    def _check_flow(self) -> list[str]:
        problems = []
        if self.logit_std <= 0:
            problems.append(f"train.logit_std: must be positive, got {self.logit_std}")
        if not -1.0 <= self.mode_scale <= _MODE_SCALE_MAX:
            problems.append(f"train.mode_scale: must be from -1 to {_MODE_SCALE_MAX:.2f} (beyond, the SD3 paper's mode "
                            f"mapping is not monotonic and leaves 0..1), got {self.mode_scale}")
        if self.flow_shift is not None and self.flow_shift <= 0:
            problems.append(f"train.flow_shift: must be positive (1: no shift; leave it out for the model's own), "
                            f"got {self.flow_shift}")
        if self.guidance_scale < 0:
            problems.append(f"train.guidance_scale: must not be negative, got {self.guidance_scale}")
        if self.timestep_sampling in ("sigma_sqrt", "cosmap") and self.loss_weighting not in ("none",
                                                                                             self.timestep_sampling):
            problems.append(f"train.loss_weighting = {self.loss_weighting!r} conflicts with timestep_sampling = "
                            f"{self.timestep_sampling!r}, which already weighs the loss by {self.timestep_sampling} "
                            "(diffusers' weighting_scheme); for uniform draws with another weighting set "
                            "timestep_sampling = 'uniform'")
        return problems


@dataclass
class SampleConfig:
    every_n_steps: int = _f(0, "Render sample images every N steps and at the end (0: off).")
    prompts: list[str] = _f([], "Prompts of the sample grid (A1111 syntax; <lora:...> tags are not used here).")
    negative_prompt: str = _f("", "Negative prompt of every sample.")
    seed: int = _f(0, "Seed of the first sample; each prompt uses seed + its index, the same at every save.")
    steps: int = _f(20, "Denoising steps per sample.")
    guidance_scale: float = _f(7.0, "Classifier-free guidance scale.")
    guidance_rescale: float | None = _f(None, "Guidance rescale (Lin et al.; diffusers' guidance_rescale, 0-1); "
                                              "default: 0.7 with train.zero_terminal_snr, else 0.")
    scheduler: str = _f("Euler a", "Sampler name (as in sd-lora generate).")
    width: int | None = _f(None, "Sample width (default: data.resolution).")
    height: int | None = _f(None, "Sample height (default: data.resolution).")

    def validate(self) -> list[str]:
        problems = []
        if self.every_n_steps < 0:
            problems.append(f"sample.every_n_steps: must not be negative, got {self.every_n_steps}")
        if self.every_n_steps and not self.prompts:
            problems.append("sample.prompts: give at least one prompt when sample.every_n_steps is set")
        if self.steps < 1:
            problems.append(f"sample.steps: must be at least 1, got {self.steps}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and (value < 8 or value % 8):
                problems.append(f"sample.{name}: must be a positive multiple of 8, got {value}")
        if self.guidance_rescale is not None and not 0.0 <= self.guidance_rescale <= 1.0:
            problems.append(f"sample.guidance_rescale: must be between 0 and 1, got {self.guidance_rescale}")
        problems += _check_scheduler(self.scheduler)
        problems += _check_prompts(self.prompts)
        return finite_first(self, "sample", problems)


# Optimisers whose update of one parameter reads only that parameter's gradient and state: stepping them one
# parameter at a time is the same update. prodigy (a step size from all gradients), adamw_schedulefree (averages
# kept per parameter group, advanced once per step() call) and came are not.
FUSED_BACKWARD_OPTIMIZERS = ("adamw", "adamw8bit", "adafactor", "lion")


def _check_fused_backward(t: TrainConfig) -> list[str]:
    if not t.fused_backward:
        return []
    problems, why = [], "train.fused_backward steps each parameter during backward"
    if t.gradient_accumulation_steps > 1:
        problems.append(f"{why}, so it cannot accumulate gradients over micro-batches: set "
                        f"gradient_accumulation_steps = 1 (got {t.gradient_accumulation_steps}) or fused_backward = false")
    if t.max_grad_norm > 0:
        problems.append(f"{why}, before the norm over all gradients is known, so it cannot clip them: set "
                        f"max_grad_norm = 0 (got {t.max_grad_norm}) or fused_backward = false")
    if t.optimizer not in FUSED_BACKWARD_OPTIMIZERS:
        problems.append(f"{why}; optimizer '{t.optimizer}' needs every gradient for one step. Use one of "
                        f"{', '.join(FUSED_BACKWARD_OPTIMIZERS)}, or fused_backward = false")
    return problems


def _check_prompts(prompts: list[str]) -> list[str]:
    # kohya's prompt options (--n, --w, ...) are checked here, not at the first sample
    from sd_lora.errors import SdLoraError
    from sd_lora.inference.prompts import prompt_spec

    problems = []
    for i, prompt in enumerate(prompts):
        try:
            prompt_spec(prompt, f"sample.prompts[{i}]")
        except SdLoraError as e:
            problems.append(str(e))
    return problems


def _check_scheduler(name: str) -> list[str]:
    # checked here, not at the first sample: a typo would otherwise stop the run with nothing saved
    from sd_lora.errors import SdLoraError
    from sd_lora.config.samplers import canonical_scheduler

    try:
        canonical_scheduler(name)
    except SdLoraError as e:
        return [f"sample.scheduler: {e}"]
    return []
