"""Tiny Stable-Diffusion-shaped pipelines, built offline in seconds.

Same component classes and block topology as the real families (SD1: conv projections,
epsilon; SD2: linear projections, v-prediction; SDXL: two text encoders, text_time
embedding), with small widths. Tests and the offline demo use them; nothing downloads.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sd_lora.models.families.unet_architectures import scheduler_config

__all__ = ["build_tiny_pipeline", "save_tiny_pipeline", "write_tokenizer_files"]

_TE_WIDTH = 32


def _bytes_to_unicode() -> dict[int, str]:
    # CLIP's byte-level BPE alphabet: printable bytes map to themselves, the rest to code points >= 256.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_tokenizer_files(directory: str | Path, words: list[str] = ()) -> Path:
    """Write a CLIP tokenizer (vocab.json, merges.txt, configs) that works fully offline.

    The vocabulary is every byte (alone and word-final) plus whole-word merges for `words`,
    so common words become single tokens while any text still tokenizes.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    alphabet = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for tok in alphabet + [c + "</w>" for c in alphabet]:
        vocab.setdefault(tok, len(vocab))
    merges: list[str] = []
    for word in sorted({w.lower() for w in words if w.isascii() and w.isalpha() and len(w) > 1}):
        # Merge left to right: "red" -> r e -> re, re d</w> -> red</w>.
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        cur = parts[0]
        for nxt in parts[1:]:
            merges.append(f"{cur} {nxt}")
            cur = cur + nxt
            vocab.setdefault(cur, len(vocab))
    merges = list(dict.fromkeys(merges))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8")
    (directory / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
    }), encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
    }), encoding="utf-8")
    return directory


def _tokenizer(tmp_dir: Path, words):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(write_tokenizer_files(tmp_dir, words)))


def _text_encoder(tokenizer, with_projection: bool, width: int = _TE_WIDTH, hidden_act: str = "quick_gelu"):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        hidden_size=width, intermediate_size=width * 2, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=len(tokenizer), max_position_embeddings=77, projection_dim=width, hidden_act=hidden_act,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg)


def _unet(family: str, cross_dim: int):
    from diffusers import UNet2DConditionModel

    if family == "sdxl":
        return UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(32, 64, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 1, 2), attention_head_dim=(2, 4, 4),
            cross_attention_dim=cross_dim, use_linear_projection=True, norm_num_groups=16,
            addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + _TE_WIDTH,
        )
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_dim, attention_head_dim=(2, 4) if family == "sd2" else 8,
        use_linear_projection=family == "sd2", norm_num_groups=16,
    )


def _vae(family: str):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=16, sample_size=32,
        scaling_factor=0.13025 if family == "sdxl" else 0.18215,
    )


def build_tiny_pipeline(family: str = "sd1", seed: int = 0, words: list[str] = (), tmp_dir: str | Path | None = None):
    """A tiny diffusers pipeline of `family` ('sd1', 'sd2', 'sdxl') with seeded random weights.

    The VAE downsamples by 2 (not 8), so a 32 px image is a 16x16 latent.
    """
    import tempfile

    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    if family not in ("sd1", "sd2", "sdxl"):
        raise ValueError(f"unknown family {family!r}; expected sd1, sd2 or sdxl")
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = _tokenizer(Path(tmp_dir or scratch) / "tokenizer", words)
    prediction = "v_prediction" if family == "sd2" else "epsilon"
    scheduler = DDIMScheduler(**scheduler_config(family, prediction))
    if family == "sdxl":
        te1 = _text_encoder(tokenizer, with_projection=False)
        te2 = _text_encoder(tokenizer, with_projection=True, hidden_act="gelu")
        return StableDiffusionXLPipeline(
            vae=_vae(family), text_encoder=te1, text_encoder_2=te2, tokenizer=tokenizer, tokenizer_2=tokenizer,
            unet=_unet(family, 2 * _TE_WIDTH), scheduler=scheduler,
        )
    te = _text_encoder(tokenizer, with_projection=False, hidden_act="gelu" if family == "sd2" else "quick_gelu")
    return StableDiffusionPipeline(
        vae=_vae(family), text_encoder=te, tokenizer=tokenizer, unet=_unet(family, _TE_WIDTH),
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def save_tiny_pipeline(out_dir: str | Path, family: str = "sd1", seed: int = 0, words: list[str] = ()) -> Path:
    """Build a tiny pipeline and save it as a diffusers directory that loads offline."""
    out_dir = Path(out_dir)
    build_tiny_pipeline(family, seed=seed, words=words).save_pretrained(str(out_dir))
    return out_dir
