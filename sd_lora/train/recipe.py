"""The LoRA training recipe, top to bottom.

    setup():  check environment -> scan data (before any model loads) -> accelerator -> models
              -> adapters -> optimiser + LR schedule -> data loader -> trackers -> resume
    train():  epoch -> batch -> accumulation step -> (log, sample, save) -> stop on signal / NaN
    save():   the adapter in the community (or diffusers) format, checked by reading it back

Everything else (config, data, models, adapters, formats, inference) is a library module this file
calls; no other module contains a training loop. The same code runs on a full SD checkpoint on a GPU
and on the tiny built-in model on a CPU, and unchanged under `accelerate launch`.
"""

from __future__ import annotations

import importlib.util
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sd_lora.adapters import adapter_spec, build_peft_config, inject
from sd_lora.config.load import dump_config
from sd_lora.config.schema import Config
from sd_lora.errors import SdLoraError
from sd_lora.fileio import atomic_write_text
from sd_lora.models.encode import PromptEmbeds, encode_latents, encode_prompts, sdxl_time_ids
from sd_lora.models.load import load_pipeline
from sd_lora.train import checkpoint, loss as L
from sd_lora.train.facts import training_facts
from sd_lora.train.optim import build_lr_scheduler, build_optimizer, param_groups

__all__ = ["TrainResult", "LoRARecipe", "run_training"]

_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass
class TrainResult:
    adapter_path: Path
    config_path: Path
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    stopped_early: bool = False
    coverage: object = None


class LoRARecipe:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.losses: list[float] = []
        self.step_times: list[float] = []  # perf_counter() at the end of each optimiser step
        self.stop_signal: str | None = None
        self.validation_losses: list[tuple[int, float]] = []
        self.out_dir = Path(cfg.output.dir)

    @property
    def global_step(self) -> int:
        return self.state.global_step

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        self._check_environment()
        self._setup_data_scan()  # an empty dataset fails in milliseconds, before any model loads
        self._setup_accelerator()
        self._setup_models()
        self._setup_class_images()  # with the base model, before adapters exist
        self._setup_adapters()
        self._setup_dataloader()
        self._setup_optimizer()
        self._setup_trackers()
        if self.cfg.train.resume:
            self._resume(self.cfg.train.resume)

    def _check_environment(self) -> None:
        log_with = self.cfg.output.log_with
        if log_with in ("tensorboard", "wandb") and importlib.util.find_spec(log_with) is None:
            raise SdLoraError(f"output.log_with = {log_with!r} but {log_with} is not installed; install it with "
                              f"`pip install 'sd-lora[{log_with}]'`, or set output.log_with = 'none'")
        if self.cfg.train.attention == "xformers" and importlib.util.find_spec("xformers") is None:
            raise SdLoraError("train.attention = 'xformers' but xformers is not installed; "
                              "install it with `pip install 'sd-lora[xformers]'` or use attention = 'sdpa'")
        if self.cfg.model.quantize:
            if importlib.util.find_spec("bitsandbytes") is None:
                raise SdLoraError(f"model.quantize = {self.cfg.model.quantize!r} needs bitsandbytes: "
                                  "pip install 'sd-lora[bnb]'")
            if not torch.cuda.is_available():
                raise SdLoraError(f"model.quantize = {self.cfg.model.quantize!r} runs on CUDA only (bitsandbytes); "
                                  "remove it to train the unquantised model on this machine")

    def _setup_data_scan(self) -> None:
        from sd_lora.data import scan_dataset

        self.scan = scan_dataset(self.cfg.data)
        for warning in self.scan.warnings:
            print(f"warning: {warning}")

    def _setup_accelerator(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration, set_seed

        t, o = self.cfg.train, self.cfg.output
        log_with = o.log_with
        if log_with == "auto":
            log_with = "tensorboard" if importlib.util.find_spec("tensorboard") else "none"
        self.accelerator = Accelerator(
            mixed_precision=t.mixed_precision, gradient_accumulation_steps=t.gradient_accumulation_steps,
            log_with=None if log_with == "none" else log_with,
            project_config=ProjectConfiguration(project_dir=str(self.out_dir), logging_dir=str(self.out_dir / "logs")))
        set_seed(t.seed)
        # Noise and timesteps come from our own CPU generator: reproducible on any device, and resumable.
        self.state = checkpoint.TrainingState(torch.Generator().manual_seed(t.seed + self.accelerator.process_index))
        self.generator = self.state.generator
        self.accelerator.register_for_checkpointing(self.state)

    def _setup_models(self) -> None:
        from diffusers import DDPMScheduler

        m, t = self.cfg.model, self.cfg.train
        pipe, self.model_info = load_pipeline(m.pretrained, family=m.family, prediction_type=m.prediction_type,
                                              allow_pickle=m.allow_pickle, quantize=m.quantize)
        self.family, self.prediction_type = self.model_info.family, self.model_info.prediction_type
        self.noise_scheduler = DDPMScheduler.from_config(
            pipe.scheduler.config, prediction_type=self.prediction_type,
            rescale_betas_zero_snr=t.zero_terminal_snr, timestep_spacing="trailing" if t.zero_terminal_snr else "leading")
        self.unet, self.vae = pipe.unet, pipe.vae
        self.text_encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if self.family == "sdxl" else [])
        self.tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if self.family == "sdxl" else [])
        self.pipeline = pipe  # shares these modules; used for sample images
        weight_dtype, device = _DTYPES[t.mixed_precision], self.accelerator.device
        for model in (self.unet, self.vae, *self.text_encoders):
            model.requires_grad_(False)
            if not getattr(model, "is_quantized", False):
                model.to(device, dtype=weight_dtype)
        self.vae.to(dtype=torch.float32)  # the SD VAE overflows in fp16; it runs once per image
        if t.attention == "xformers":
            self.unet.enable_xformers_memory_efficient_attention()
        if t.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if self.cfg.network.train_text_encoder:
                for te in self.text_encoders:
                    te.gradient_checkpointing_enable()

    def _setup_adapters(self) -> None:
        n = self.cfg.network
        torch.manual_seed(self.cfg.train.seed)  # adapter init is seeded
        self.component_names = ["unet"] + (self._te_names() if n.train_text_encoder else [])
        models = [self.unet] + (self.text_encoders if n.train_text_encoder else [])
        self.modules_adapted = {}
        for name, model in zip(self.component_names, models):
            spec = adapter_spec(n, model, "unet" if name == "unet" else "text_encoder")
            self.modules_adapted[name] = inject(model, build_peft_config(n.type, spec))
        self.trained = models

    def _te_names(self) -> list[str]:
        return ["text_encoder", "text_encoder_2"][: len(self.text_encoders)]

    def _setup_class_images(self) -> None:
        from sd_lora.data import class_images_needed, prepare_class_images

        if class_images_needed(self.scan) and self.accelerator.is_main_process:
            from sd_lora.train.samples import class_image_generator

            generate = class_image_generator(self.pipeline, self.cfg.data.resolution)
            self.scan = prepare_class_images(self.cfg.data, self.scan, generate, seed=self.cfg.train.seed)
        self.accelerator.wait_for_everyone()
        if class_images_needed(self.scan):  # other processes: re-read what the main process generated
            from sd_lora.data import scan_dataset

            self.scan = scan_dataset(self.cfg.data)

    def _setup_dataloader(self) -> None:
        from sd_lora.data import build_dataloader, build_dataset, format_plan, has_validation, make_plan

        t, d, acc = self.cfg.train, self.cfg.data, self.accelerator
        tok = self.tokenizers[0]
        dataset = build_dataset(d, self.scan, split="train", seed=t.seed,
                                count_tokens=lambda text: len(tok(text).input_ids) - 2,
                                max_tokens=tok.model_max_length - 2)
        self._setup_caches(dataset)
        loader = dict(seed=t.seed, num_workers=d.num_workers, num_processes=acc.num_processes,
                      process_index=acc.process_index)
        self.dataloader = build_dataloader(dataset, batch_size=t.batch_size, **loader)
        self.val_dataloader = None
        if has_validation(d):
            self.val_dataloader = build_dataloader(build_dataset(d, self.scan, split="validation", seed=t.seed),
                                                   batch_size=t.batch_size, **loader)
        self.steps_per_epoch = max(1, math.ceil(len(self.dataloader) / t.gradient_accumulation_steps))
        self.max_steps = t.max_epochs * self.steps_per_epoch if t.max_epochs else t.max_steps
        if acc.is_main_process:
            plan = make_plan(d, self.scan, batch_size=t.batch_size, gradient_accumulation_steps=t.gradient_accumulation_steps,
                             num_processes=acc.num_processes, max_steps=self.max_steps, seed=t.seed,
                             train_text_encoder=self.cfg.network.train_text_encoder)
            print(format_plan(plan))

    def _setup_caches(self, dataset) -> None:
        """Latents and text-encoder outputs computed once; with both cached, VAE and text encoders leave the GPU."""
        from sd_lora.data import cache_latents, cache_text_outputs, text_cache_blocker

        d, device = self.cfg.data, self.accelerator.device
        latents_cached = texts_cached = False
        if d.cache_latents:
            encoder_id = f"{self.model_info.location}:{self.vae.dtype}"
            stats = cache_latents(dataset, lambda px: encode_latents(self.vae, px.to(device)),
                                  to_disk=d.cache_latents_to_disk, encoder_id=encoder_id)
            print(f"latent cache: {stats}")
            latents_cached = True
        if d.cache_text_encoder_outputs:
            blocker = text_cache_blocker(dataset, self.cfg.network.train_text_encoder)
            if blocker:
                print(f"text-encoder outputs are not cached: {blocker}")
            else:
                with torch.no_grad():
                    n = cache_text_outputs(dataset, lambda caps: encode_prompts(
                        self.text_encoders, self.tokenizers, caps, self.family))
                print(f"text-encoder outputs cached for {n} distinct captions")
                texts_cached = True
        if latents_cached and texts_cached and device.type != "cpu":
            for model in (self.vae, *self.text_encoders):
                model.to("cpu")

    def _setup_optimizer(self) -> None:
        t = self.cfg.train
        groups = param_groups(dict(zip(self.component_names, self.trained)), t)
        self.optimizer = build_optimizer(groups, t, self.accelerator.device)
        # Stepped by us once per optimiser step (accelerate would step it once per process).
        self.lr_scheduler = build_lr_scheduler(self.optimizer, t, self.max_steps)
        prepared = self.accelerator.prepare(*self.trained, self.optimizer)
        self.trained, self.optimizer = list(prepared[:-1]), prepared[-1]
        # Forward passes go through the prepared wrappers (DDP syncs gradients in their hooks).
        self.unet_forward = self.trained[0]
        wrapped = dict(zip(self.component_names, self.trained))
        self.text_encoders_forward = [wrapped.get(name, te) for name, te in
                                      zip(["text_encoder", "text_encoder_2"], self.text_encoders)]
        checkpoint.install_adapter_only_hooks(self.accelerator, self.component_names)

    def _setup_trackers(self) -> None:
        if self.accelerator.log_with:
            from sd_lora.config.load import dump_dict

            flat = {f"{s}.{k}": v if isinstance(v, (int, float, str, bool)) else str(v)
                    for s, values in dump_dict(self.cfg).items() for k, v in values.items()}
            logs = self.out_dir / "logs"  # wandb's run folder goes beside TensorBoard's, not into the CWD
            logs.mkdir(parents=True, exist_ok=True)
            self.accelerator.init_trackers("sd-lora", config=flat, init_kwargs={"wandb": {"dir": str(logs)}})

    def _resume(self, resume: str) -> None:
        path = checkpoint.find_checkpoint(self.out_dir, resume)
        self.accelerator.load_state(str(path))
        for _ in range(self.state.global_step):  # the schedule is a pure function of the step count
            self.lr_scheduler.step()
        self.accelerator.print(f"resumed from {path} at step {self.state.global_step}")

    # ------------------------------------------------------------------ train
    def train(self) -> None:
        from accelerate import skip_first_batches

        acc, st = self.accelerator, self.state
        self.started_at = datetime.now(timezone.utc)
        self._install_signal_handlers()
        bar = tqdm(total=self.max_steps, initial=st.global_step, desc="training", unit="step",
                   disable=not acc.is_local_main_process)
        self._window_start, window = time.perf_counter(), []
        while st.global_step < self.max_steps and not self.stop_signal:
            self.dataloader.set_epoch(st.epoch)
            batches = skip_first_batches(self.dataloader, st.batch_in_epoch) if st.batch_in_epoch else self.dataloader
            for batch in batches:
                window.append(self.train_step(batch))
                st.batch_in_epoch += 1
                epoch_end = st.batch_in_epoch == len(self.dataloader)
                if epoch_end:
                    st.epoch, st.batch_in_epoch = st.epoch + 1, 0
                if acc.sync_gradients:
                    window = self._after_optimizer_step(window, bar)
                if epoch_end:
                    self._periodic(epoch_end=True)
                if st.global_step >= self.max_steps or self.stop_signal:
                    break
        bar.close()
        self._restore_signal_handlers()
        self.finished_at = datetime.now(timezone.utc)
        if self.stop_signal:
            self.save_checkpoint()
            self.accelerator.print(f"stopped by {self.stop_signal} at step {st.global_step}; state and adapter saved. "
                                   f"Resume with:\n  {self._resume_command()}")
        elif self.cfg.output.save_state_at_end:
            self.save_checkpoint(adapter=False)  # the final adapter is written by save()

    def _after_optimizer_step(self, window: list[float], bar) -> list[float]:
        """Schedule, record, log, sample and save after an optimiser step; returns the loss window to keep."""
        st, accum = self.state, self.cfg.train.gradient_accumulation_steps
        self.lr_scheduler.step()
        step_loss = sum(window[-accum:]) / min(len(window), accum)
        self.losses.append(step_loss)
        self.step_times.append(time.perf_counter())
        st.global_step += 1
        bar.update(1)
        if st.global_step % self.cfg.train.log_every_n_steps == 0 or st.global_step == self.max_steps:
            self._log(step_loss, (time.perf_counter() - self._window_start) / max(1, len(window)), bar)
            self._window_start, window = time.perf_counter(), []
        self._periodic(epoch_end=False)
        return window

    def train_step(self, batch: dict) -> float:
        """One micro-batch: forward, backward and (at the end of an accumulation window) an optimiser step."""
        t, acc = self.cfg.train, self.accelerator
        with acc.accumulate(*self.trained):
            loss = self.compute_loss(batch)
            if not torch.isfinite(loss):
                raise SdLoraError(
                    f"training loss became {loss.item()} at step {self.state.global_step + 1} (batch: "
                    f"{', '.join(map(str, batch.get('keys', [])))[:200]}); nothing was saved from this step, the last "
                    "saved adapter is intact. Lower train.learning_rate, or use mixed_precision = 'bf16' instead of 'fp16'")
            acc.backward(loss)
            if acc.sync_gradients and t.max_grad_norm > 0:
                self.grad_norm = acc.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                                     t.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach().item()

    def compute_loss(self, batch: dict, noise: torch.Tensor | None = None,
                     timesteps: torch.Tensor | None = None) -> torch.Tensor:
        """Frozen parts under no_grad; noise and timesteps from our generator unless given; the configured loss."""
        t, device = self.cfg.train, self.accelerator.device
        with torch.no_grad():
            latents = batch["latents"].to(device) if "latents" in batch else \
                encode_latents(self.vae, batch["pixel_values"].to(device))
        latents = latents.to(self.unet.dtype)
        if noise is None:
            noise = L.sample_noise(latents.shape, self.generator, t.noise_offset)
            timesteps = L.sample_timesteps(latents.shape[0], self.generator, t.min_timestep, t.max_timestep)
        noise, timesteps = noise.to(device, latents.dtype), timesteps.to(device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if "text_embeds" in batch:
            embeds = PromptEmbeds(**batch["text_embeds"]).to(device)
        else:
            with torch.set_grad_enabled(self.cfg.network.train_text_encoder), self.accelerator.autocast():
                embeds = encode_prompts(self.text_encoders_forward, self.tokenizers, batch["captions"],
                                        self.family).to(device)
        added = None
        if self.family == "sdxl":
            time_ids = sdxl_time_ids(batch["original_size"], batch["crop_top_left"], batch["target_size"])
            added = {"text_embeds": embeds.pooled, "time_ids": time_ids.to(device, embeds.pooled.dtype)}
        with self.accelerator.autocast():
            pred = self.unet_forward(noisy, timesteps, embeds.hidden_states.to(self.unet.dtype),
                                     added_cond_kwargs=added).sample
        target = L.diffusion_target(self.noise_scheduler, latents, noise, timesteps, self.prediction_type)
        per_sample = L.per_sample_loss(pred, target, t.loss_type, t.huber_c)
        if t.min_snr_gamma:
            per_sample = per_sample * L.min_snr_weights(self.noise_scheduler.alphas_cumprod, timesteps,
                                                        t.min_snr_gamma, self.prediction_type)
        return L.weighted_mean(per_sample, batch.get("loss_weight"))

    def validation_loss(self) -> float | None:
        """Mean loss over the validation set with each image's fixed noise and timestep (comparable across steps)."""
        from sd_lora.data import validation_noise

        if self.val_dataloader is None:
            return None
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in self.val_dataloader:
                shape = self._latent_shape(batch)
                noise, timesteps = validation_noise(batch["noise_seed"], shape,
                                                    self.noise_scheduler.config.num_train_timesteps)
                n = len(batch["captions"])
                total += self.compute_loss(batch, noise, timesteps).item() * n
                count += n
        return total / max(count, 1)

    def _latent_shape(self, batch: dict) -> tuple[int, ...]:
        if "latents" in batch:
            return tuple(batch["latents"].shape[1:])
        _, _, h, w = batch["pixel_values"].shape
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return (self.vae.config.latent_channels, h // factor, w // factor)

    def _log(self, step_loss: float, sec_per_micro: float, bar) -> None:
        lrs = {f"lr/{g.get('name', i)}": g["lr"] for i, g in enumerate(self.optimizer.param_groups)}
        sec_per_step = sec_per_micro * self.cfg.train.gradient_accumulation_steps
        bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{next(iter(lrs.values())):.2e}", s_per_step=f"{sec_per_step:.2f}")
        if self.accelerator.log_with:
            values = {"loss": step_loss, "steps_per_second": 1 / max(sec_per_step, 1e-9), **lrs}
            if getattr(self, "grad_norm", None) is not None:
                values["grad_norm"] = float(self.grad_norm)
            self.accelerator.log(values, step=self.state.global_step)

    def _periodic(self, epoch_end: bool) -> None:
        """Samples and intermediate saves, when their step/epoch counters say so."""
        o, s, step = self.cfg.output, self.cfg.sample, self.state.global_step
        if epoch_end:
            due = o.save_every_n_epochs and self.state.epoch % o.save_every_n_epochs == 0
        else:
            due = o.save_every_n_steps and step % o.save_every_n_steps == 0
        if due and step < self.max_steps:
            self.save_checkpoint()
        if not epoch_end and s.every_n_steps and step % s.every_n_steps == 0 and step < self.max_steps:
            self.sample()
        every = self.cfg.data.validation_every_n_steps
        if not epoch_end and self.val_dataloader is not None and (
                (every and step % every == 0) or step == self.max_steps):
            self._log_validation()

    def _log_validation(self) -> None:
        val = self.validation_loss()
        self.validation_losses.append((self.state.global_step, val))
        self.accelerator.print(f"step {self.state.global_step}: validation loss {val:.5f}")
        if self.accelerator.log_with:
            self.accelerator.log({"validation_loss": val}, step=self.state.global_step)

    # ------------------------------------------------------------------ save
    def save_checkpoint(self, adapter: bool = True) -> None:
        """Resumable state plus an intermediate adapter file, pruned to output.save_last_n."""
        o, step = self.cfg.output, self.state.global_step
        path = checkpoint.checkpoint_dir(self.out_dir, step)
        self.accelerator.save_state(str(path))
        if self.accelerator.is_main_process and adapter:
            self._export(self.out_dir / f"{o.name}-step{step:06d}.safetensors")
            checkpoint.prune(self.out_dir, o.save_last_n, f"{o.name}-step*.safetensors")
        self.accelerator.wait_for_everyone()

    def sample(self) -> Path | None:
        from sd_lora.train.samples import render_samples

        if not self.accelerator.is_main_process:
            return None
        path = render_samples(self.pipeline, self.cfg, self.family, self.state.global_step, self.out_dir / "samples")
        if self.accelerator.log_with:
            import numpy as np
            from PIL import Image

            grid = np.asarray(Image.open(path).convert("RGB"))
            for tracker in self.accelerator.trackers:
                if tracker.name == "tensorboard":
                    tracker.log_images({"samples": grid[None]}, step=self.state.global_step, dataformats="NHWC")
                elif tracker.name == "wandb":
                    tracker.log_images({"samples": [grid]}, step=self.state.global_step)
        return path

    def _export(self, path: Path):
        from sd_lora.formats import community_metadata, save_adapter

        o = self.cfg.output
        components = {name: self.accelerator.unwrap_model(model) for name, model in zip(self.component_names, self.trained)}
        return save_adapter(path, components, self.family, unet_config=dict(self.unet.config),
                            save_precision=_DTYPES[o.save_precision], format=o.format,
                            metadata=community_metadata(training_facts(self)))

    def save(self) -> TrainResult:
        o = self.cfg.output
        result = TrainResult(self.out_dir / f"{o.name}.safetensors", self.out_dir / f"{o.name}.config.toml",
                             self.losses, self.state.global_step, stopped_early=bool(self.stop_signal))
        if self.accelerator.is_main_process and not self.stop_signal:
            result.coverage = self._export(result.adapter_path)
            atomic_write_text(result.config_path, dump_config(self.cfg))
            if self.cfg.sample.every_n_steps:
                self.sample()
            print(f"saved {result.adapter_path} ({result.coverage.summary()})")
        self.accelerator.wait_for_everyone()
        return result

    # ------------------------------------------------------------------ signals and cleanup
    def _install_signal_handlers(self) -> None:
        def request_stop(signum, _frame):
            self.stop_signal = signal.Signals(signum).name  # finish the current step, then save and exit

        self._previous_handlers = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous_handlers[sig] = signal.signal(sig, request_stop)
            except ValueError:  # not the main thread (e.g. inside a notebook worker): keep the defaults
                pass

    def _restore_signal_handlers(self) -> None:
        for sig, handler in getattr(self, "_previous_handlers", {}).items():
            signal.signal(sig, handler)

    def _resume_command(self) -> str:
        args = " ".join(a if " " not in a else repr(a) for a in sys.argv[1:]) or "train --config CONFIG"
        return f"sd-lora {args} --set train.resume=latest"

    def cleanup(self) -> None:
        self.accelerator.end_training()


def run_training(cfg: Config) -> TrainResult:
    recipe = LoRARecipe(cfg)
    recipe.setup()
    recipe.train()
    result = recipe.save()
    recipe.cleanup()
    return result
