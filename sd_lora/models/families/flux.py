"""FLUX.1 (dev, schnell and their fine-tunes): a double/single-stream transformer (`FluxTransformer2DModel`)
trained by rectified flow with a resolution-dependent timestep shift, conditioned on T5-XXL hidden states and
CLIP-L's pooled output.

Conditioning is built as diffusers' FluxPipeline.encode_prompt builds it: T5's last hidden states (padded to the
T5 length, 512 by default) and CLIP-L's pooler output (77 tokens; no clip skip, no windows). The transformer takes
2x2-packed latent patches with position ids; dev (a `guidance_embeds` transformer) also takes the distilled
guidance value, train.guidance_scale while training and the request's guidance when generating. Schnell has no
guidance input and runs without classifier-free guidance.
"""

from __future__ import annotations

import re

import torch

from sd_lora.models.encode import PromptEmbeds, tokenize
from sd_lora.models.families.flux_files import FluxFiles
from sd_lora.models.families.flow_settings import flow_problems

__all__ = ["Flux", "FLUX_PRESETS", "T5_DEFAULT_LENGTH", "DEV_LICENCE_NOTE"]

T5_DEFAULT_LENGTH = 512  # FluxPipeline's max_sequence_length for dev (kohya's t5xxl_max_token_length for dev too)

# suffixes match the double blocks' and (for the plain attention names) the single blocks' modules
_ATTN = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
         "attn.add_v_proj", "attn.to_add_out"]
_MLP = ["ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp", "proj_out"]
_MODULATION = ["norm1.linear", "norm1_context.linear", "norm.linear"]
FLUX_PRESETS = {"attn": _ATTN, "attn-mlp": _ATTN + _MLP, "full": _ATTN + _MLP + _MODULATION}
_DOUBLE = re.compile(r"(?:^|\.)transformer_blocks\.(\d+)\.")
_SINGLE = re.compile(r"(?:^|\.)single_transformer_blocks\.(\d+)\.")

DEV_LICENCE_NOTE = (
    "licence: FLUX.1 [dev] is under the FLUX.1 [dev] Non-Commercial License "
    "(https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md): the model and what is derived "
    "from it, LoRAs included, are for non-commercial use; read it before any commercial use")


def _config(denoiser_config, key, default=None):
    return denoiser_config.get(key, default) if isinstance(denoiser_config, dict) else \
        getattr(denoiser_config, key, default)


class Flux(FluxFiles):  # FluxFiles: names, file facts, recognisers (shared with the formats)
    objective = "flow"
    text_encoders = ("text_encoder", "text_encoder_2")  # CLIP-L, T5-XXL
    tokenizers = ("tokenizer", "tokenizer_2")
    trainable_text_encoders = ("text_encoder",)  # T5-XXL stays frozen
    vae_scaling_factor = 0.3611
    own_settings = (("data", "t5_max_length", None), ("train", "guidance_scale", 1.0))

    def native_resolution(self, denoiser_config, vae_config) -> int:
        # the transformer has no sample size; FLUX.1's VAE config carries the 1024 px it was trained at
        return int(vae_config.get("sample_size", 1024))

    @staticmethod
    def is_dev(denoiser) -> bool:
        """Whether the transformer takes the distilled-guidance input (FLUX.1 dev and its fine-tunes)."""
        return bool(_config(getattr(denoiser, "config", denoiser), "guidance_embeds", False))

    def describe(self, pipe) -> list[str]:
        if self.is_dev(pipe.transformer):
            return ["model: FLUX.1 dev (guidance-distilled: train.guidance_scale and the generation guidance "
                    "feed its guidance input; no classifier-free guidance)", DEV_LICENCE_NOTE]
        return ["model: FLUX.1 schnell (timestep-distilled, no guidance input: generate with about 4 steps)"]

    # ---- conditioning and the transformer call
    def encode_options(self, denoiser, data=None) -> dict:
        return {"t5_max_length": getattr(data, "t5_max_length", None) or T5_DEFAULT_LENGTH}

    def encode_prompts(self, encoders, tokenizers, captions, clip_skip=None, windows=1, *,
                       t5_max_length: int = T5_DEFAULT_LENGTH, **options) -> PromptEmbeds:
        clip, t5 = encoders
        clip_device = next(clip.parameters()).device
        pooled = clip(tokenize(tokenizers[0], captions).to(clip_device), output_hidden_states=False).pooler_output
        t5_device = next(t5.parameters()).device
        ids = tokenizers[1](captions, padding="max_length", max_length=t5_max_length, truncation=True,
                            return_tensors="pt").input_ids
        hidden = t5(ids.to(t5_device), output_hidden_states=False)[0]
        return PromptEmbeds(hidden.to(pooled.device), pooled)

    def predict_options(self, train) -> dict:
        return {"guidance_scale": train.guidance_scale}

    def predict(self, denoiser, noisy, timesteps, embeds, batch, guidance_scale: float = 1.0) -> torch.Tensor:
        from sd_lora.train.flow import guidance_input, latent_image_ids, pack_latents, text_ids, unpack_latents

        b, _, h, w = noisy.shape
        hidden = embeds.hidden_states.to(noisy.dtype)
        guidance = guidance_input(b, guidance_scale, noisy.device) if self.is_dev(_unwrapped(denoiser)) else None
        packed = denoiser(hidden_states=pack_latents(noisy), timestep=timesteps.to(noisy.dtype) / 1000,
                          guidance=guidance, pooled_projections=embeds.pooled.to(noisy.dtype),
                          encoder_hidden_states=hidden, txt_ids=text_ids(hidden.shape[1], noisy.device, noisy.dtype),
                          img_ids=latent_image_ids(h, w, noisy.device, noisy.dtype), return_dict=False)[0]
        return unpack_latents(packed, h, w)

    def pipeline_embeds(self, pos, neg, dtype) -> dict:
        return {"prompt_embeds": pos.hidden_states.to(dtype), "pooled_prompt_embeds": pos.pooled.to(dtype)}

    def uses_cfg(self, pipe, guidance: float) -> bool:
        return False  # dev's guidance is an input of the model (FluxPipeline's guidance_scale), schnell has none

    # ---- training
    def check_training(self, cfg) -> list[str]:
        problems = flow_problems(self.title, cfg)
        if (cfg.train.clip_skip or 1) != 1:
            problems.append(f"train.clip_skip: {self.title} conditions on CLIP-L's pooled output of its last layer; "
                            "leave train.clip_skip out")
        if cfg.data.max_token_length:
            problems.append(f"data.max_token_length: {self.title}'s captions are read by T5 (data.t5_max_length "
                            "tokens); leave data.max_token_length out")
        return problems

    def target_presets(self) -> dict[str, list[str]]:
        return FLUX_PRESETS

    def save_tiny(self, out_dir, seed: int = 0, words=()):
        from sd_lora.models.tiny_transformers import build_tiny_flux

        return build_tiny_flux(out_dir, variant="dev", seed=seed, words=words)

    def dead_targets(self, denoiser_config) -> set[str]:
        # the final projection is named like the single blocks' proj_out, which the MLP presets mean
        return {"proj_out"}

    def block_index(self, module_name, denoiser_config) -> int | None:
        """Double blocks 0..num_layers-1, then single blocks after them."""
        name = module_name + "."
        single = _SINGLE.search(name)
        if single:
            return int(_config(denoiser_config, "num_layers")) + int(single[1])
        double = _DOUBLE.search(name)
        return int(double[1]) if double else None

    def num_blocks(self, denoiser_config) -> int:
        return int(_config(denoiser_config, "num_layers")) + int(_config(denoiser_config, "num_single_layers"))

    def block_names(self, denoiser_config) -> list[str]:
        return [f"double_{i}" for i in range(int(_config(denoiser_config, "num_layers")))] + \
            [f"single_{i}" for i in range(int(_config(denoiser_config, "num_single_layers")))]

    def blocks(self, denoiser) -> list[torch.nn.Module]:
        return [*denoiser.transformer_blocks, *denoiser.single_transformer_blocks]


def _unwrapped(model):
    """The model inside DDP / torch.compile wrappers (their `config` is the wrapped model's)."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model
