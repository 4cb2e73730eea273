"""The LoRA training recipe, top to bottom.

    check inputs -> setup() (data plan, accelerator, models, adapters, optimiser, data loader)
    -> train() (epoch -> batch -> accumulation step -> log) -> save() -> cleanup()

Everything else (config, data, models, adapters, formats) is a library module this file calls;
no other module contains a training loop. The same code runs on a full SD checkpoint on a GPU
and on the tiny built-in model on a CPU, and unchanged under `accelerate launch`.
"""

from __future__ import annotations

import importlib.util
import math
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sd_lora.adapters import adapter_spec, build_peft_config, inject, trainable_parameters
from sd_lora.config.load import dump_config
from sd_lora.config.schema import Config
from sd_lora.errors import SdLoraError
from sd_lora.fileio import atomic_write_text
from sd_lora.models.encode import encode_latents, encode_prompts, sdxl_time_ids
from sd_lora.models.load import load_pipeline
from sd_lora.train.loss import diffusion_target, weighted_mse

__all__ = ["TrainResult", "LoRARecipe", "run_training"]

_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass
class TrainResult:
    adapter_path: Path
    config_path: Path
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    coverage: object = None


class LoRARecipe:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.losses: list[float] = []
        self.step_times: list[float] = []  # perf_counter() at the end of each optimiser step
        self.global_step = 0

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        self._check_environment()
        self._setup_data_scan()  # before any model loads: an empty dataset fails in milliseconds
        self._setup_accelerator()
        self._setup_models()
        self._setup_adapters()
        self._setup_optimizer()
        self._setup_dataloader()

    def _check_environment(self) -> None:
        if self.cfg.train.attention == "xformers" and importlib.util.find_spec("xformers") is None:
            raise SdLoraError("train.attention = 'xformers' but xformers is not installed; "
                              "install it with `pip install 'sd-lora[xformers]'` or use attention = 'sdpa'")

    def _setup_data_scan(self) -> None:
        from sd_lora.data import scan_dataset

        self.scan = scan_dataset(self.cfg.data)

    def _setup_accelerator(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        t = self.cfg.train
        self.accelerator = Accelerator(mixed_precision=t.mixed_precision,
                                       gradient_accumulation_steps=t.gradient_accumulation_steps)
        set_seed(t.seed)
        # Noise and timesteps come from our own CPU generator so runs are reproducible on any device.
        self.generator = torch.Generator().manual_seed(t.seed + self.accelerator.process_index)

    def _setup_models(self) -> None:
        from diffusers import DDPMScheduler

        m, t = self.cfg.model, self.cfg.train
        pipe, self.model_info = load_pipeline(m.pretrained, family=m.family, prediction_type=m.prediction_type)
        self.family = self.model_info.family
        self.prediction_type = self.model_info.prediction_type
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config, prediction_type=self.prediction_type)
        self.unet, self.vae = pipe.unet, pipe.vae
        self.text_encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if self.family == "sdxl" else [])
        self.tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if self.family == "sdxl" else [])
        self.base_pipeline = pipe
        weight_dtype = _DTYPES[t.mixed_precision]
        device = self.accelerator.device
        for model in (self.unet, self.vae, *self.text_encoders):
            model.requires_grad_(False)
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
        components = [("unet", self.unet)]
        if n.train_text_encoder:
            components += list(zip(self._te_names(), self.text_encoders))
        self.modules_adapted, self.trained = {}, []
        for name, model in components:
            spec = adapter_spec(n, model, "unet" if name == "unet" else "text_encoder")
            self.modules_adapted[name] = inject(model, build_peft_config(n.type, spec))
            self.trained.append(model)

    def _te_names(self) -> list[str]:
        return ["text_encoder", "text_encoder_2"][: len(self.text_encoders)]

    def _setup_optimizer(self) -> None:
        from diffusers.optimization import get_scheduler

        t = self.cfg.train
        params = [p for model in self.trained for p in trainable_parameters(model)]
        self.optimizer = torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay)
        self.lr_scheduler = get_scheduler("constant_with_warmup" if t.lr_warmup_steps else "constant",
                                          self.optimizer, num_warmup_steps=t.lr_warmup_steps)
        prepared = self.accelerator.prepare(*self.trained, self.optimizer, self.lr_scheduler)
        self.trained, (self.optimizer, self.lr_scheduler) = list(prepared[:-2]), prepared[-2:]

    def _setup_dataloader(self) -> None:
        from sd_lora.data import build_dataloader, build_dataset

        t = self.cfg.train
        dataset = build_dataset(self.cfg.data, self.scan, split="train", seed=t.seed)
        self.dataloader = build_dataloader(dataset, batch_size=t.batch_size, seed=t.seed,
                                           num_workers=self.cfg.data.num_workers,
                                           num_processes=self.accelerator.num_processes,
                                           process_index=self.accelerator.process_index)

    # ------------------------------------------------------------------ train
    def train(self) -> None:
        t = self.cfg.train
        acc = self.accelerator
        self.started_at = datetime.now(timezone.utc)
        bar = tqdm(total=t.max_steps, desc="training", unit="step", disable=not acc.is_local_main_process)
        window_start, window_loss = time.perf_counter(), []
        epoch = 0
        while self.global_step < t.max_steps:
            if hasattr(self.dataloader, "set_epoch"):
                self.dataloader.set_epoch(epoch)
            for batch in self.dataloader:
                loss = self.train_step(batch)
                window_loss.append(loss)
                if not acc.sync_gradients:
                    continue
                step_loss = sum(window_loss[-t.gradient_accumulation_steps:]) / min(len(window_loss), t.gradient_accumulation_steps)
                if not math.isfinite(step_loss):
                    raise SdLoraError(f"training loss became {step_loss} at step {self.global_step + 1}; lower "
                                      "train.learning_rate or use mixed_precision = 'bf16' instead of 'fp16'")
                self.losses.append(step_loss)
                self.step_times.append(time.perf_counter())
                self.global_step += 1
                bar.update(1)
                if self.global_step % t.log_every_n_steps == 0 or self.global_step == t.max_steps:
                    elapsed = time.perf_counter() - window_start
                    bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{self.lr_scheduler.get_last_lr()[0]:.2e}",
                                    s_per_step=f"{elapsed / max(1, len(window_loss) / t.gradient_accumulation_steps):.2f}")
                    window_start, window_loss = time.perf_counter(), []
                if self.global_step >= t.max_steps:
                    break
            epoch += 1
        bar.close()
        self.finished_at = datetime.now(timezone.utc)
        self.epochs = epoch

    def train_step(self, batch: dict) -> float:
        """One micro-batch: forward, backward and (at the end of an accumulation window) an optimiser step."""
        t, acc = self.cfg.train, self.accelerator
        with acc.accumulate(*self.trained):
            loss = self.compute_loss(batch)
            acc.backward(loss)
            if acc.sync_gradients and t.max_grad_norm > 0:
                acc.clip_grad_norm_(self.optimizer.param_groups[0]["params"], t.max_grad_norm)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach().item()

    def compute_loss(self, batch: dict) -> torch.Tensor:
        """One micro-batch: frozen parts under no_grad, noise + timesteps from our generator, UNet loss."""
        device = self.accelerator.device
        with torch.no_grad():
            latents = batch["latents"].to(device) if "latents" in batch else \
                encode_latents(self.vae, batch["pixel_values"].to(device), self.generator)
        latents = latents.to(self.unet.dtype)
        noise = torch.randn(latents.shape, generator=self.generator).to(device, latents.dtype)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  generator=self.generator).to(device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        with torch.set_grad_enabled(self.cfg.network.train_text_encoder), self.accelerator.autocast():
            embeds = encode_prompts(self.text_encoders, self.tokenizers, batch["captions"], self.family).to(device)
        added = None
        if self.family == "sdxl":
            time_ids = sdxl_time_ids(batch["original_size"], batch["crop_top_left"], batch["target_size"])
            added = {"text_embeds": embeds.pooled, "time_ids": time_ids.to(device, embeds.pooled.dtype)}
        with self.accelerator.autocast():
            pred = self.unet(noisy, timesteps, embeds.hidden_states.to(self.unet.dtype),
                             added_cond_kwargs=added).sample
        target = diffusion_target(self.noise_scheduler, latents, noise, timesteps, self.prediction_type)
        return weighted_mse(pred, target, batch.get("loss_weight"))

    # ------------------------------------------------------------------ save
    def save(self) -> TrainResult:
        from sd_lora.formats import community_metadata, save_adapter

        o = self.cfg.output
        out_dir = Path(o.dir)
        config_path = out_dir / f"{o.name}.config.toml"
        adapter_path = out_dir / f"{o.name}.safetensors"
        result = TrainResult(adapter_path, config_path, self.losses, self.global_step)
        if not self.accelerator.is_main_process:
            return result
        components = {"unet": self.accelerator.unwrap_model(self.trained[0])}
        if self.cfg.network.train_text_encoder:
            for name, te in zip(self._te_names(), self.trained[1:]):
                components[name] = self.accelerator.unwrap_model(te)
        metadata = community_metadata(self._training_facts())
        result.coverage = save_adapter(adapter_path, components, self.family, unet_config=dict(self.unet.config),
                                       save_precision=_DTYPES[o.save_precision], format=o.format, metadata=metadata)
        atomic_write_text(config_path, dump_config(self.cfg))
        print(f"saved {adapter_path} ({result.coverage.summary()})")
        return result

    def _training_facts(self) -> dict:
        c, t, n = self.cfg, self.cfg.train, self.cfg.network
        return {
            "family": self.family, "prediction_type": self.prediction_type, "output_name": c.output.name,
            "title": c.output.name, "rank": n.rank, "alpha": n.alpha, "network_args": {},
            "resolution": c.data.resolution, "max_steps": t.max_steps, "steps": self.global_step,
            "epochs": getattr(self, "epochs", 0), "learning_rate": t.learning_rate,
            "unet_lr": t.learning_rate, "text_encoder_lr": t.learning_rate if n.train_text_encoder else None,
            "optimizer": "torch.optim.AdamW", "lr_scheduler": "constant_with_warmup" if t.lr_warmup_steps else "constant",
            "seed": t.seed, "mixed_precision": t.mixed_precision, "batch_size": t.batch_size,
            "gradient_accumulation_steps": t.gradient_accumulation_steps,
            "num_images": getattr(self.scan, "num_images", None), "base_model": self.model_info.name,
            "session_id": uuid.uuid4().hex[:10], "training_started_at": self.started_at,
            "training_finished_at": self.finished_at, "dataset_dirs": [c.data.dir],
            "tag_frequency": getattr(self.scan, "tag_frequency", None), "train_text_encoder": n.train_text_encoder,
        }

    def cleanup(self) -> None:
        self.accelerator.end_training()


def run_training(cfg: Config) -> TrainResult:
    recipe = LoRARecipe(cfg)
    recipe.setup()
    recipe.train()
    result = recipe.save()
    recipe.cleanup()
    return result
