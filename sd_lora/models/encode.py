"""Turn captions into the UNet's conditioning, and images into latents, for every family.

Clip skip counts like AUTOMATIC1111 and kohya (1 = last layer, 2 = penultimate). Long captions are split
into windows of 75 tokens, each encoded with its own BOS/EOS and the windows' hidden states concatenated
(AUTOMATIC1111's and kohya's long-prompt encoding); SDXL's pooled output comes from the first window. Training
(`data.max_token_length`) and generation (long prompts) share this code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sd_lora.errors import SdLoraError

__all__ = ["PromptEmbeds", "tokenize", "token_windows", "windows_needed", "clip_hidden", "encode_clip", "sdxl_time_ids",
           "encode_latents"]


@dataclass
class PromptEmbeds:
    hidden_states: torch.Tensor  # [B, 77 * windows, cross_attention_dim]
    pooled: torch.Tensor | None = None  # SDXL: [B, proj_dim] of the second encoder; SD3 / FLUX: the pooled CLIP input

    def to(self, device) -> "PromptEmbeds":
        return PromptEmbeds(self.hidden_states.to(device), None if self.pooled is None else self.pooled.to(device))


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def _raw_tokens(tokenizer, captions: list[str]) -> list[list[int]]:
    return tokenizer(captions, add_special_tokens=False, truncation=False, verbose=False).input_ids


def windows_needed(tokenizer, captions: list[str]) -> int:
    """Windows the longest of `captions` needs (at least one)."""
    size = tokenizer.model_max_length - 2
    return max(1, *(math.ceil(len(ids) / size) for ids in _raw_tokens(tokenizer, captions)))


def token_windows(tokenizer, captions: list[str], windows: int = 1) -> torch.Tensor:
    """[B * windows, 77] ids: each caption's tokens cut to `windows` x 75, split into windows of 75, each
    wrapped as BOS + tokens + EOS and padded with the tokenizer's pad token (one window = `tokenize`)."""
    size = tokenizer.model_max_length - 2
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    rows = []
    for ids in _raw_tokens(tokenizer, captions):
        ids = ids[: windows * size]
        for w in range(windows):
            chunk = [bos, *ids[w * size:(w + 1) * size], eos]
            rows.append(chunk + [pad] * (size + 2 - len(chunk)))
    return torch.tensor(rows, dtype=torch.long)


def clip_hidden(te, ids: torch.Tensor, skip: int, penultimate: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states at the clip-skip layer, output[0]) of one CLIP encoder. `penultimate`: the model conditions
    on the layer before the last at clip skip 1 (SDXL, SD3), without the final layer norm; otherwise the last
    layer, and at clip skip N the N-th from last through the final layer norm (SD1/SD2)."""
    layers = getattr(getattr(te, "module", te), "config").num_hidden_layers
    if skip > layers:
        raise SdLoraError(f"clip skip {skip} is beyond the text encoder's {layers} layers; use 1 (last layer) to "
                          f"{layers}")
    if not penultimate and skip == 1:
        out = te(ids)
        return out[0], out[0]
    out = te(ids, output_hidden_states=True)
    if penultimate:
        return out.hidden_states[-(skip + 1)], out[0]
    inner = getattr(te, "module", te)
    return getattr(inner, "text_model", inner).final_layer_norm(out.hidden_states[-skip]), out[0]


def encode_clip(text_encoders: list, tokenizers: list, captions: list[str], clip_skip: int | None = None,
                windows: int = 1, penultimate: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each CLIP encoder's hidden states [B, 77 * windows, width] and output[0] of each caption's first window
    (the pooled projection of a CLIPTextModelWithProjection). `windows` x 75 tokens per caption."""
    device = next(text_encoders[0].parameters()).device  # also works on a DDP-wrapped encoder
    skip, batch = clip_skip or 1, len(captions)
    hidden, pooled = [], []
    for te, tok in zip(text_encoders, tokenizers):
        states, first = clip_hidden(te, token_windows(tok, captions, windows).to(device), skip, penultimate)
        hidden.append(states.reshape(batch, windows * states.shape[1], states.shape[2]))
        pooled.append(first[::windows])
    return hidden, pooled


def sdxl_time_ids(original_size: torch.Tensor, crop_top_left: torch.Tensor, target_size: torch.Tensor) -> torch.Tensor:
    """[B, 6] = (orig h, orig w, crop top, crop left, target h, target w) — SDXL's micro-conditioning."""
    return torch.cat([original_size, crop_top_left, target_size], dim=1).float()


def encode_latents(vae, pixel_values: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] -> scaled latents.

    The posterior mean, not a sample: the SD VAE's posterior is so narrow that the two differ by noise far
    below the diffusion noise, and the mean makes cached and uncached training identical.
    Returned contiguous (NCHW): on the CPU the VAE's convolutions hand back a channels-last view, and a UNet fed
    that beside contiguous noise runs in a mix of memory layouts, measurably slower (about 7 % for SD1 at 256 px).
    """
    latents = vae.encode(pixel_values.to(vae.device, vae.dtype)).latent_dist.mode()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((latents - shift) * vae.config.scaling_factor).contiguous()
