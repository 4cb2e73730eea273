"""The LoRA training recipe, top to bottom.

    setup():  check environment -> accelerator -> output dir (writable, locked) -> scan data and print the plan
              (before any model loads) -> models -> class images -> adapters -> weight storage and block
              swapping -> data loader -> optimiser + LR schedule -> trackers -> resume (only a complete state
              of this same run)
    train():  epoch -> batch -> accumulation step -> (log, sample, save) -> stop on signal / NaN
    save():   the adapter in the community (or diffusers) format, checked by reading it back

Everything else (config, data, models, adapters, formats, inference) is a library module this file
calls; no other module contains a training loop. The same code runs on a full SD checkpoint on a GPU
and on the tiny built-in model on a CPU, and unchanged under `accelerate launch`.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from sd_lora.adapters import adapter_spec, build_peft_config, inject, trainable_parameters
from sd_lora.config.load import dump_config
from sd_lora.config.schema import Config
from sd_lora.data.plan import run_length
from sd_lora.errors import SdLoraError
from sd_lora.fileio import atomic_write_text, write_errors
from sd_lora.models.encode import PromptEmbeds, encode_latents
from sd_lora.models.families import get_family, settings_problems
from sd_lora.models.fp8 import apply_weight_storage, storage_dtype
from sd_lora.models.load import describe_source, load_pipeline
from sd_lora.adapters.dropout import install_lora_dropout
from sd_lora.train import checkpoint, fused_backward, memory, preflight, speed, trackers
from sd_lora.train.block_swap import BlockSwapper
from sd_lora.train.caches import setup_caches, text_cache_settings, validation_loss
from sd_lora.train.objectives import build_objective
from sd_lora.train.ema import AdapterEMA, rounded_to
from sd_lora.train.facts import RunFacts, training_facts
from sd_lora.train.memory_plan import with_resolved_checkpointing
from sd_lora.train.precision import with_resolved_precision
from sd_lora.train.optim import block_lr_weight, build_lr_scheduler, build_optimizer, param_groups, set_optimizer_mode
from sd_lora.train.progress import Progress
from sd_lora.train.signals import StopSignals

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
    def __init__(self, cfg: Config, overwrite: bool = False):
        self.cfg = cfg
        self.overwrite = overwrite  # replace an earlier run in output.dir (otherwise refused unless resuming)
        self.replaced: Path | None = None  # where that run's files wait until this run has saved something
        self.losses: list[float] = []
        self.step_times: list[float] = []  # perf_counter() at the end of each optimiser step
        self.signals = StopSignals()
        self.validation_losses: list[tuple[int, float]] = []
        self.out_dir = Path(cfg.output.dir)
        self.lock = preflight.RunLock(self.out_dir)
        self.released = memory.Released()  # encoders freed or offloaded once their outputs are cached

    @property
    def stop_signal(self) -> str | None:
        return self.signals.requested

    @property
    def global_step(self) -> int:
        return self.state.global_step

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        preflight.check_environment(self.cfg)
        self.cfg, self.precision_line = with_resolved_precision(self.cfg, preflight.needs_cpu_process_group())
        self._setup_accelerator()
        self._setup_output_dir()
        self._setup_data_scan()  # an empty dataset fails in milliseconds, and the plan shows, before any model loads
        self._setup_models()
        self._setup_class_images()  # with the base model, before adapters exist
        self.fingerprint = checkpoint.run_fingerprint(self.cfg, self.scan)  # what a resumed state must match
        self._setup_adapters()
        self._setup_memory()
        self._setup_dataloader()
        self._setup_optimizer()
        self._setup_rank_budget()
        # compile, channels-last, CPU allocator (sd_lora.train.speed)
        self.denoiser_forward, self.speed_options = speed.apply_speed_options(
            self.cfg.train, self.accelerator.device, self.denoiser, self.denoiser_forward)
        self._setup_trackers()
        if self.cfg.train.resume:
            self._resume(self.cfg.train.resume)

    def _setup_output_dir(self) -> None:
        """Writable, and ours alone: found before any model loads, not after the last step."""
        if self.accelerator.is_main_process:
            preflight.check_output_dir(self.out_dir)
            self.lock.acquire()
            earlier = preflight.check_previous_run(self.out_dir, self.cfg.output.name, self.cfg.train.resume,
                                                   self.overwrite)
            self.replaced = preflight.set_aside_previous_run(self.out_dir, earlier)
            if not self.cfg.train.resume and not self.replaced:
                preflight.archive_unsaved_metrics(self.out_dir)
        self.accelerator.wait_for_everyone()

    def _setup_data_scan(self) -> None:
        from sd_lora.data import format_plan, scan_dataset
        from sd_lora.train.plan import plan_for

        self.scan = scan_dataset(self.cfg.data)
        if self.accelerator.is_main_process:
            for warning in self.scan.warnings:
                print(f"warning: {warning}")
            print(format_plan(plan_for(self.cfg, self.scan, self.accelerator.num_processes)))
            print(self.precision_line)

    def _setup_accelerator(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration, set_seed

        t = self.cfg.train
        self.accelerator = Accelerator(
            mixed_precision=t.mixed_precision, gradient_accumulation_steps=t.gradient_accumulation_steps,
            log_with=trackers.tracker_name(self.cfg.output.log_with), cpu=preflight.needs_cpu_process_group(),
            project_config=ProjectConfiguration(project_dir=str(self.out_dir), logging_dir=str(self.out_dir / "logs")))
        preflight.check_process_group(self.accelerator)
        set_seed(t.seed)
        # Noise and timesteps come from our own CPU generator, the same in every process: reproducible on any
        # device, resumable, and independent of how a global batch is split over processes (see _draw_noise).
        self.state = checkpoint.TrainingState(torch.Generator().manual_seed(t.seed))
        self.generator = self.state.generator
        self.accelerator.register_for_checkpointing(self.state)

    def _setup_models(self) -> None:
        m, t = self.cfg.model, self.cfg.train
        self.accelerator.print(f"model: {describe_source(m.pretrained, m.revision)}")
        pipe, self.model_info = load_pipeline(m.pretrained, family=m.family, prediction_type=m.prediction_type,
                                              allow_pickle=m.allow_pickle, quantize=m.quantize, revision=m.revision,
                                              options=lambda family: get_family(family).load_options(m))
        self.family, self.prediction_type = get_family(self.model_info.family), self.model_info.prediction_type
        problems = settings_problems(self.family, self.cfg)
        if problems:
            raise SdLoraError(f"{self.family.title} cannot train with these settings:\n  " + "\n  ".join(problems))
        self.accelerator.print(f"model: family {self.family.name}, {self.prediction_type} prediction"
                               f"{' (overridden in the config)' if m.family or m.prediction_type else ''}")
        for line in self.family.describe(pipe):
            self.accelerator.print(line)
        self.objective = build_objective(self.family.objective, pipe.scheduler.config, self.prediction_type, t)
        if t.zero_terminal_snr and self.prediction_type == "epsilon":
            print("warning: train.zero_terminal_snr on an epsilon-prediction model: it cannot learn the last step")
        parts = self.family.parts(pipe)
        self.denoiser, self.vae, self.text_encoders, self.tokenizers = \
            parts.denoiser, parts.vae, parts.text_encoders, parts.tokenizers
        self.text_encoder_names = parts.text_encoder_names
        self.encode_options = self.family.encode_options(self.denoiser, self.cfg.data)
        self.predict_options = self.family.predict_options(t)
        self.pipeline = pipe  # shares these modules; used for sample images
        weight_dtype, device = _DTYPES[t.mixed_precision], self.accelerator.device
        # a denoiser with narrower weight storage or swapped blocks reaches the device after its adapters exist
        # (_setup_memory): the full-width model never has to fit there
        self.placed_late = m.weight_dtype != "auto" or t.blocks_to_swap > 0
        for model in (self.denoiser, self.vae, *self.text_encoders):
            model.requires_grad_(False)
            if not getattr(model, "is_quantized", False):
                model.to("cpu" if model is self.denoiser and self.placed_late else device, dtype=weight_dtype)
        self.vae.to(dtype=torch.float32)  # the SD VAE overflows in fp16; it runs once per image
        self.compute_dtype = self.denoiser.dtype  # what the denoiser computes in, whatever its weights are stored in
        if device.type == "cpu":
            from sd_lora.train.threads import apply_cpu_threads

            self.threads_before = torch.get_num_threads()  # given back in cleanup (a notebook's other work)
            self.accelerator.print(apply_cpu_threads(t.cpu_threads, sum(p.numel() for p in self.denoiser.parameters())))
        if t.attention == "xformers":
            self.denoiser.enable_xformers_memory_efficient_attention()
        self.cfg, line = with_resolved_checkpointing(self.cfg, {self.family.denoiser: self.denoiser, "vae": self.vae, **dict(
            zip(self.text_encoder_names, self.text_encoders))}, device, self.family.name)
        self.accelerator.print(line)
        if self.cfg.train.gradient_checkpointing:
            self.denoiser.enable_gradient_checkpointing()
            if self.cfg.network.train_text_encoder:
                for te in self.text_encoders:  # transformers 5 renamed it (the old name warns)
                    (getattr(te, "activation_checkpointing_enable", None) or te.gradient_checkpointing_enable)()

    def _setup_adapters(self) -> None:
        n, family = self.cfg.network, self.family
        torch.manual_seed(self.cfg.train.seed)  # adapter init is seeded
        trained_te = [(name, te) for name, te in zip(self.text_encoder_names, self.text_encoders)
                      if family.trainable_text_encoders is None or name in family.trainable_text_encoders]
        named = [(family.denoiser, self.denoiser)] + (trained_te if n.train_text_encoder else [])
        self.component_names, models = [name for name, _ in named], [model for _, model in named]
        self.modules_adapted = {}
        init = self._read_init_weights() if n.init_weights else None
        for name, model in named:
            if init and n.dim_from_weights:  # the file's modules, ranks and alphas (kohya --dim_from_weights)
                config = init.peft_config(name, model, n.dropout)
            elif name == family.denoiser:
                config = build_peft_config(n.type, adapter_spec(
                    n, model, name, presets=family.target_presets(), exclude=family.dead_targets(model.config),
                    block_index=lambda path: family.block_index(path, self.denoiser.config)))
            else:
                config = build_peft_config(n.type, adapter_spec(n, model, "text_encoder"))
            self.modules_adapted[name] = inject(model, config)
            install_lora_dropout(model, n.rank_dropout, n.module_dropout)
        if init:
            init.load_into(dict(zip(self.component_names, models)))
            self.init_weights = init.record()
        self.trained = models
        if self.accelerator.is_main_process:
            o = self.cfg.output
            periodic = o.save_every_n_steps or o.save_every_n_epochs
            kept = (o.save_last_n or 2) if periodic else 0
            preflight.check_free_space(self.out_dir, sum(p.numel() for m in models for p in trainable_parameters(m)),
                                       kept + int(o.save_state_at_end))

    def _setup_memory(self) -> None:
        """model.weight_dtype: the frozen denoiser weights stored narrower (after the adapters are injected, so
        DoRA's base layers keep their dtype); train.blocks_to_swap: the last blocks' frozen weights in CPU memory;
        then the denoiser goes to the device."""
        m, t, device = self.cfg.model, self.cfg.train, self.accelerator.device
        self.block_swapper = None
        if not self.placed_late:
            return
        compute = _DTYPES[t.mixed_precision]
        if m.weight_dtype != "auto" and storage_dtype(m.weight_dtype) != compute:
            self.accelerator.print(f"memory: {apply_weight_storage(self.denoiser, m.weight_dtype, compute)}")
        if t.blocks_to_swap:
            self.block_swapper = BlockSwapper(self.family.blocks(self.denoiser), device, t.blocks_to_swap)
            self.block_swapper.move_model(self.denoiser)
            self.accelerator.print(f"memory: {t.blocks_to_swap} of {len(self.block_swapper.blocks)} denoiser blocks "
                                   "kept in CPU memory, each moved to the device for its forward and backward")
        else:
            self.denoiser.to(device)

    def _read_init_weights(self):
        from sd_lora.train.init_weights import read_init_weights

        n = self.cfg.network
        components = dict(zip([self.family.denoiser, *self.text_encoder_names], [self.denoiser, *self.text_encoders]))
        init = read_init_weights(n.init_weights, components, self.family.name, self.denoiser.config, n.type, n.dora)
        self.accelerator.print(f"network: starting from {n.init_weights} ({init.adapter_type})")
        return init

    def _setup_class_images(self) -> None:
        from sd_lora.data import class_images_needed, prepare_class_images

        if class_images_needed(self.scan) and self.accelerator.is_main_process:
            from sd_lora.train.samples import class_image_generator

            d = self.cfg.data
            generate = class_image_generator(self.pipeline, d.resolution, d.class_image_steps, d.class_image_scheduler)
            self.scan = prepare_class_images(self.cfg.data, self.scan, generate, seed=self.cfg.train.seed)
        self.accelerator.wait_for_everyone()
        if class_images_needed(self.scan):  # other processes: re-read what the main process generated
            from sd_lora.data import scan_dataset

            self.scan = scan_dataset(self.cfg.data)

    def _setup_dataloader(self) -> None:
        from sd_lora.data import build_dataloader, build_dataset, has_validation, loader_options

        t, d, acc = self.cfg.train, self.cfg.data, self.accelerator
        tok = self.tokenizers[0]
        dataset = build_dataset(d, self.scan, split="train", seed=t.seed,
                                count_tokens=lambda text: len(tok(text).input_ids) - 2,
                                max_tokens=d.max_token_length or tok.model_max_length - 2)
        with write_errors(f"the disk cache ({d.dir or 'the data folders'}/.sd_lora_cache/)",
                          ", or keep the caches in memory (data.cache_latents_to_disk = false, "
                          "data.cache_text_encoder_outputs_to_disk = false). Nothing was trained"):
            self.caches = setup_caches(
                dataset, data=d, train=t, train_text_encoder=self.cfg.network.train_text_encoder,
                num_processes=acc.num_processes, device=acc.device, vae=self.vae, latent_dtype=self.compute_dtype,
                model_id=self.model_info.location, encode_text=lambda caps: self.encode_text(caps, self.text_encoders),
                text_settings=text_cache_settings(self.model_info.location, self.family.name, self.text_encoders, t, d,
                                                  self.encode_options),
                autocast=acc.autocast)
        self.cache_choice, self.text_cache_settings = self.caches.choice, self.caches.text_settings
        self.released = memory.release_encoders(
            self.vae, dict(zip(self.text_encoder_names, self.text_encoders)), self.caches.latents, self.caches.texts,
            device=acc.device, validation=has_validation(d), sampling=bool(self.cfg.sample.every_n_steps),
            train_text_encoder=self.cfg.network.train_text_encoder, weight_dtype=_DTYPES[t.mixed_precision])
        loader = dict(seed=t.seed, num_workers=d.num_workers, num_processes=acc.num_processes,
                      process_index=acc.process_index, **loader_options(d, acc.device))
        self.dataloader = build_dataloader(dataset, batch_size=t.batch_size, **loader)
        self.val_dataloader = None
        if has_validation(d):
            self.val_dataloader = build_dataloader(build_dataset(d, self.scan, split="validation", seed=t.seed),
                                                   batch_size=t.batch_size, **loader)
        self.steps_per_epoch, self.max_steps, _ = run_length(len(self.dataloader), t.gradient_accumulation_steps,
                                                             t.max_steps, t.max_epochs)

    def _setup_optimizer(self) -> None:
        t = self.cfg.train
        groups = param_groups(dict(zip(self.component_names, self.trained)), t, block_lr_weight(
            self.cfg.network, lambda path: self.family.block_index(path, self.denoiser.config)))
        self.optimizer = build_optimizer(groups, t, self.accelerator.device)
        self.ema = AdapterEMA([p for g in groups for p in g["params"]], t.ema_decay) if t.ema_decay else None
        if self.ema:  # saved with every resumable state
            self.accelerator.register_for_checkpointing(self.ema)
        # a swapped denoiser is placed by its BlockSwapper (a model.to(device) would bring every block back)
        placement = [not (self.block_swapper and model is self.denoiser) for model in self.trained] + [True]
        prepared = self.accelerator.prepare(*self.trained, self.optimizer, device_placement=placement)
        self.trained, self.optimizer = list(prepared[:-1]), prepared[-1]
        if t.fused_backward:  # each parameter stepped in backward; train_step's step() then finds no gradient
            fused_backward.install(self.optimizer, self.accelerator.num_processes, t.mixed_precision, self.cfg.network.type)
        # Built on the prepared optimiser (torch warns when step() is wrapped after the schedule exists) and
        # stepped by us once per optimiser step (accelerate would step it once per process).
        self.lr_scheduler = build_lr_scheduler(self.optimizer, t, self.max_steps)
        # Forward passes go through the prepared wrappers (DDP syncs gradients in their hooks).
        self.denoiser_forward = self.trained[0]
        wrapped = dict(zip(self.component_names, self.trained))
        self.text_encoders_forward = [wrapped.get(name, te) for name, te in zip(self.text_encoder_names, self.text_encoders)]
        checkpoint.install_adapter_only_hooks(self.accelerator, self.component_names)

    def _setup_rank_budget(self) -> None:
        """AdaLoRA: the rank allocator that peft's injection drops, one budget over every trained component; its
        importance averages and final pattern are part of the resumable state."""
        self.rank_budget = None
        if self.cfg.network.type == "adalora":
            from sd_lora.adapters.adalora import RankBudget

            self.rank_budget = RankBudget({name: self.accelerator.unwrap_model(model) for name, model in
                                           zip(self.component_names, self.trained)}, self.max_steps)
            self.accelerator.register_for_checkpointing(self.rank_budget)
            self.accelerator.print(self.rank_budget.describe())

    def _setup_trackers(self) -> None:
        if self.accelerator.log_with:
            trackers.init_trackers(self.accelerator, self.cfg, self.out_dir)

    def _resume(self, resume: str) -> None:
        path = checkpoint.load_matching_state(self.accelerator, self.out_dir, resume, self.fingerprint,
                                              self.cfg.train.resume_ignore_mismatch)
        with warnings.catch_warnings():  # fast-forwarding before any optimiser step is the point here
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            for _ in range(self.state.global_step):  # the schedule is a pure function of the step count
                self.lr_scheduler.step()
        self.accelerator.print(f"resumed from {path} at step {self.state.global_step}")

    # ------------------------------------------------------------------ train
    def train(self) -> None:
        from accelerate import skip_first_batches

        acc, st = self.accelerator, self.state
        self.started_at = datetime.now(timezone.utc)
        self.signals.install()
        bar = self.progress = Progress(self.max_steps, st.global_step, self.out_dir / "logs" / "metrics.jsonl",
                                       enabled=acc.is_main_process)
        self._set_train_mode(True)
        self._window_start, window = time.perf_counter(), []
        while st.global_step < self.max_steps and not self.stop_signal:
            self.dataloader.set_epoch(st.epoch)
            batches = skip_first_batches(self.dataloader, st.batch_in_epoch) if st.batch_in_epoch else self.dataloader
            for batch in batches:
                window.append(self.train_step(batch, self._window_scale()))
                st.batch_in_epoch += 1
                epoch_end = st.batch_in_epoch == len(self.dataloader)
                if epoch_end:
                    st.epoch, st.batch_in_epoch = st.epoch + 1, 0
                if acc.sync_gradients:
                    window = self._after_optimizer_step(window, bar)
                if epoch_end:
                    self._periodic(epoch_end=True)
                if st.global_step >= self.max_steps or (self.stop_signal and acc.sync_gradients):  # whole steps
                    break
        bar.close()
        self._set_train_mode(False)
        self.finished_at = datetime.now(timezone.utc)
        if self.stop_signal:
            self.save_checkpoint()
            self.accelerator.print(f"stopped by {self.stop_signal} at step {st.global_step}; state and adapter saved. "
                                   f"Resume with:\n  {self._resume_command()}")
        elif self.cfg.output.save_state_at_end:
            self.save_checkpoint(adapter=False)  # the final adapter is written by save()

    def _after_optimizer_step(self, window: list[float], bar) -> list[float]:
        """Schedule, record, log, sample and save after an optimiser step; returns the loss window to keep."""
        st, size = self.state, self._window_size
        self.lr_scheduler.step()
        step_loss = sum(window[-size:]) / min(len(window), size)
        self.losses.append(step_loss)
        self.step_times.append(time.perf_counter())
        st.global_step += 1
        if self.ema:
            self.ema.update()
        bar.advance()
        if st.global_step % self.cfg.train.log_every_n_steps == 0 or st.global_step == self.max_steps:
            self._log(step_loss, (time.perf_counter() - self._window_start) / max(1, len(window)), bar)
            self._window_start, window = time.perf_counter(), []
        self._periodic(epoch_end=False)
        return window

    def _window_scale(self) -> float:
        """Place the next micro-batch in its accumulation window, which never crosses an epoch's end (see
        run_length): accelerate steps the optimiser when its counter reaches the window size. Returns the loss
        scale that makes a short last window weigh as much as a full one (accelerate divides by the full size)."""
        a, n, b = self.cfg.train.gradient_accumulation_steps, len(self.dataloader), self.state.batch_in_epoch
        start = b // a * a
        size = min(a, n - start)
        self.accelerator.step = a - 1 if b == start + size - 1 else b - start
        self._window_size = size
        return a / size

    def train_step(self, batch: dict, scale: float = 1.0) -> float:
        """One micro-batch: forward, backward and (at the end of an accumulation window) an optimiser step."""
        t, acc = self.cfg.train, self.accelerator
        with acc.accumulate(*self.trained):
            loss = self.compute_loss(batch)
            if not torch.isfinite(loss):
                raise SdLoraError(
                    f"training loss became {loss.item()} at step {self.state.global_step + 1} (batch: "
                    f"{', '.join(map(str, batch.get('keys', [])))[:200]}); nothing was saved from this step, the last "
                    "saved adapter is intact. Lower train.learning_rate, or use mixed_precision = 'bf16' instead of 'fp16'")
            total = (loss + self.rank_budget.orthogonality_penalty()) if self.rank_budget else loss
            acc.backward(total * scale if scale != 1 else total)
            if acc.sync_gradients and t.max_grad_norm > 0:
                self.grad_norm = acc.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                                     t.max_grad_norm)
            self.optimizer.step()
            if self.rank_budget and acc.sync_gradients:  # on the accumulated gradients, before they are cleared
                self.rank_budget.step(self.state.global_step + 1)
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach().item()

    def compute_loss(self, batch: dict, noise: torch.Tensor | None = None, timesteps: torch.Tensor | None = None,
                     input_noise: torch.Tensor | None = None) -> torch.Tensor:
        """Frozen parts under no_grad; noise (target, and denoiser input: perturbed with ip_noise_gamma) and
        timesteps from our generator unless given; the objective's noisy input, target and loss."""
        device, objective = self.accelerator.device, self.objective
        with torch.no_grad():
            latents = batch["latents"].to(device) if "latents" in batch else \
                encode_latents(self.vae, batch["pixel_values"].to(device))
        latents = latents.to(self.compute_dtype)
        if noise is None:
            noise, input_noise, timesteps = self._draw_noise(latents.shape)
        noise, timesteps = noise.to(device, latents.dtype), timesteps.to(device)
        input_noise = noise if input_noise is None else input_noise.to(device, latents.dtype)
        noisy = objective.noisy(latents, input_noise, timesteps)
        if "text_embeds" in batch:
            embeds = PromptEmbeds(**batch["text_embeds"]).to(device)
        else:
            with torch.set_grad_enabled(self.cfg.network.train_text_encoder), self.accelerator.autocast():
                embeds = self.encode_text(batch["captions"], self.text_encoders_forward).to(device)
        with self.accelerator.autocast():
            pred = self.family.predict(self.denoiser_forward, noisy, timesteps, embeds, batch, **self.predict_options)
        target = objective.target(latents, noise, timesteps)
        return objective.loss(pred, target, timesteps, batch.get("mask"), batch.get("loss_weight"))

    def encode_text(self, captions: list[str], encoders: list) -> PromptEmbeds:
        """Captions -> conditioning with this run's clip skip and caption windows (data.max_token_length)."""
        return self.family.encode_prompts(encoders, self.tokenizers, captions, self.cfg.train.clip_skip,
                                          (self.cfg.data.max_token_length or 75) // 75, **self.encode_options)

    def _draw_noise(self, shape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Noise and timesteps from the generator all processes share. With several processes each draws the
        *global* micro-batch (every process's share) and takes its slice, so 2 processes x batch 1 see what
        1 process x batch 2 sees; one process draws just its batch."""
        t, acc = self.cfg.train, self.accelerator
        n, procs = shape[0], acc.num_processes
        full, start = (procs * t.batch_size, acc.process_index * t.batch_size) if procs > 1 else (n, 0)
        return tuple(x[start:start + n] for x in self.objective.draw((full, *shape[1:]), self.generator))

    def validation_loss(self) -> float | None:
        """Mean loss over the validation set with each image's fixed noise and timestep (comparable across steps)."""
        with torch.no_grad(), self._eval_mode():
            return validation_loss(self.val_dataloader, self.compute_loss, self.vae.config, self.objective)

    def _set_train_mode(self, training: bool) -> None:
        """Trained models in train mode while training (adapter dropout on, text-encoder checkpointing active)."""
        for model in self.trained:
            model.train(training)
        set_optimizer_mode(getattr(self, "optimizer", None), training)  # schedule-free: train/eval points

    @contextlib.contextmanager
    def _eval_mode(self):
        """Validation and samples run in eval mode (deterministic: no dropout); the previous mode comes back."""
        before = [m.training for m in self.trained]
        self._set_train_mode(False)
        try:
            yield
        finally:
            for model, mode in zip(self.trained, before):
                model.train(mode)
            set_optimizer_mode(getattr(self, "optimizer", None), before[0])

    @contextlib.contextmanager
    def _as_saved(self):
        """Eval mode, the EMA weights when on, rounded to output.save_precision: what the saved file holds."""
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        with self._eval_mode(), self.ema.applied() if self.ema else contextlib.nullcontext(), \
                rounded_to(params, _DTYPES[self.cfg.output.save_precision]):
            yield

    def _log(self, step_loss: float, sec_per_micro: float, bar) -> None:
        lrs = {f"lr/{g.get('name', i)}": g["lr"] for i, g in enumerate(self.optimizer.param_groups)}
        sec_per_step = sec_per_micro * self.cfg.train.gradient_accumulation_steps
        grad_norm = float(self.grad_norm) if getattr(self, "grad_norm", None) is not None else None
        extra = self.rank_budget.log_values(self.state.global_step) if self.rank_budget else None
        bar.log(step_loss, lrs, sec_per_step, grad_norm, extra)
        if self.accelerator.log_with:
            values = {"loss": step_loss, "steps_per_second": 1 / max(sec_per_step, 1e-9), **lrs, **(extra or {})}
            if grad_norm is not None:
                values["grad_norm"] = grad_norm
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
        self.progress.validation(val)
        if self.accelerator.log_with:
            self.accelerator.log({"validation_loss": val}, step=self.state.global_step)

    # ------------------------------------------------------------------ save
    def save_checkpoint(self, adapter: bool = True) -> None:
        """Resumable state plus an intermediate adapter file, pruned to output.save_last_n."""
        o, step = self.cfg.output, self.state.global_step
        with self.signals.saving_files(), write_errors(f"the state of step {step} in {self.out_dir}",
                                                       ", then resume with train.resume = 'latest'"):
            checkpoint.save_state(self.accelerator, self.out_dir, step, self.fingerprint)
            if self.accelerator.is_main_process and adapter:
                self._export(self.out_dir / f"{o.name}-step{step:06d}.safetensors")
                checkpoint.prune(self.out_dir, o.save_last_n, o.name)
            self.accelerator.wait_for_everyone()
        self._drop_replaced()  # this run has files of its own now

    def sample_records(self, step: int) -> list[dict]:
        from sd_lora.train.samples import sample_records

        info = self.model_info
        return sample_records(self.cfg, step, self._adapter_file(), family=self.family.name, dtype=self.compute_dtype,
                              base_model=info.name, base_model_location=info.location)

    def sample(self) -> Path | None:
        from sd_lora.train.samples import render_samples

        if not self.accelerator.is_main_process:
            return None
        step = self.state.global_step
        # offloaded encoders back on the device meanwhile
        with self._as_saved(), memory.encoders_for_sampling(self.released, self.accelerator.device, self._fresh_pipeline):
            path = render_samples(self.pipeline, self.sample_records(step), step, self.out_dir / "samples",
                                  self._adapter_file(), denoiser=self.family.denoiser)
        if self.accelerator.log_with:
            trackers.log_grid(self.accelerator, path, self.state.global_step)
        return path

    def _fresh_pipeline(self):
        m = self.cfg.model
        pipe, _ = load_pipeline(m.pretrained, family=m.family, prediction_type=m.prediction_type, allow_pickle=m.allow_pickle,
                                revision=m.revision, options=lambda family: get_family(family).load_options(m))
        return pipe

    def restore_encoders(self) -> None:
        """Reload the encoder weights freed for training (for a caller that wants the whole pipeline after it)."""
        memory.restore_encoders(self.released, self._fresh_pipeline(), self.accelerator.device)

    def _adapter_file(self) -> str:  # the adapter file holding this step's weights (the final one at the end)
        o, step = self.cfg.output, self.state.global_step
        return f"{o.name}.safetensors" if step >= self.max_steps and not self.stop_signal else f"{o.name}-step{step:06d}.safetensors"

    def _export(self, path: Path):
        from sd_lora.formats import community_metadata, save_adapter

        o = self.cfg.output
        components = {name: self.accelerator.unwrap_model(model) for name, model in zip(self.component_names, self.trained)}
        with self._as_saved():  # the facts (sample records) describe the weights as saved
            run = RunFacts(
                self.family.name, self.prediction_type, self.model_info.name, self.model_info.location,
                self.state.global_step, self.state.epoch, self.max_steps, self.steps_per_epoch, len(self.dataloader),
                self.dataloader.dataset, len(self.val_dataloader.dataset) if self.val_dataloader is not None else 0,
                self.accelerator.num_processes, bool(getattr(getattr(self, "cache_choice", None), "latents", False)),
                getattr(self, "started_at", None), getattr(self, "finished_at", None),
                getattr(self, "init_weights", None), self.rank_budget,
                self.sample_records(self.state.global_step) if self.cfg.sample.prompts else None)
            return save_adapter(path, components, self.family.name, unet_config=dict(self.denoiser.config),
                                save_precision=_DTYPES[o.save_precision], format=o.format,
                                metadata=community_metadata(training_facts(self.cfg, self.scan, run)))

    def save(self) -> TrainResult:
        o = self.cfg.output
        result = TrainResult(self.out_dir / f"{o.name}.safetensors", self.out_dir / f"{o.name}.config.toml",
                             self.losses, self.state.global_step, stopped_early=bool(self.stop_signal))
        if self.accelerator.is_main_process and not self.stop_signal:
            with self.signals.saving_files(), write_errors(f"the adapter {result.adapter_path}",
                                                           ", then resume with train.resume = 'latest'"):
                result.coverage = self._export(result.adapter_path)
                atomic_write_text(result.config_path, dump_config(self.cfg))
            if self.cfg.sample.every_n_steps:
                self.sample()
            print(result.coverage.summary())
            if self.rank_budget:
                from sd_lora.adapters.adalora import format_rank_table

                print(format_rank_table(self.rank_budget.ranks(), self.cfg.network.init_r))
        self._drop_replaced()
        self.accelerator.wait_for_everyone()
        return result

    # ------------------------------------------------------------------ cleanup
    def _resume_command(self) -> str:
        args = " ".join(a if " " not in a else repr(a) for a in sys.argv[1:]) or "train --config CONFIG"
        return f"sd-lora {args} --set train.resume=latest"

    def _drop_replaced(self) -> None:
        if self.replaced is not None:
            import shutil

            shutil.rmtree(self.replaced, ignore_errors=True)
            self.replaced = None

    def cleanup(self) -> None:
        if self.replaced is not None:  # this run saved nothing: the earlier run stays as it was
            preflight.restore_previous_run(self.out_dir, self.replaced)
        self.signals.restore()
        self.lock.release()
        if getattr(self, "threads_before", None):
            torch.set_num_threads(self.threads_before)
        if hasattr(self, "accelerator"):
            self.accelerator.end_training()


def run_training(cfg: Config, overwrite: bool = False) -> TrainResult:
    """Train as `cfg` says. An earlier run in output.dir is an error unless train.resume continues it or
    `overwrite` replaces it."""
    from sd_lora.train.plan import with_model_defaults

    recipe = LoRARecipe(with_model_defaults(cfg), overwrite=overwrite)
    try:
        recipe.setup()
        recipe.train()
        return recipe.save()  # signal handlers stay ours until the files are written
    finally:
        recipe.cleanup()
