"""Tiny SD3 / SD3.5 and FLUX.1 pipelines, built offline in seconds, and the full-size transformer configs.

The tiny pipelines have every component class of the real ones (MMDiT or FLUX double/single blocks, CLIP-L,
CLIP-G, T5 with its tokenizer made here in code, a 16-channel VAE, the flow-match scheduler with the family's
settings) at small widths. The VAE downsamples by 2, so a 32 px image is a 16x16 latent. Text widths differ on
purpose (CLIP-L 32, CLIP-G 48, T5 96) so that a mixed-up encoder fails on a shape instead of passing silently.

`FULL_SIZE_TRANSFORMERS` holds the published transformer configs (`transformer/config.json` of each hub model) as
plain dicts, for building the real architectures on torch.device("meta") (`meta_transformer`).
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

import torch

from sd_lora.models.tiny import write_tokenizer_files

__all__ = [
    "FULL_SIZE_TRANSFORMERS", "SD3_VAE_FACTORS", "FLUX_VAE_FACTORS", "FLUX_SCHEDULER_CONFIG", "SD3_SCHEDULER_CONFIG",
    "meta_transformer", "tiny_sd3_pipeline", "tiny_flux_pipeline", "build_tiny_sd3", "build_tiny_flux",
    "write_t5_tokenizer_files",
]

# (scaling_factor, shift_factor) of the real 16-channel VAEs (their vae/config.json)
SD3_VAE_FACTORS = (1.5305, 0.0609)
FLUX_VAE_FACTORS = (0.3611, 0.1159)

# scheduler/scheduler_config.json of the hub models (the keys that differ from diffusers' defaults)
SD3_SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "shift": 3.0}
FLUX_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
    "base_image_seq_len": 256, "max_image_seq_len": 4096,
}

_SD3_COMMON = {"sample_size": 128, "patch_size": 2, "in_channels": 16, "out_channels": 16, "attention_head_dim": 64,
               "joint_attention_dim": 4096, "pooled_projection_dim": 2048}
_FLUX_COMMON = {"patch_size": 1, "in_channels": 64, "out_channels": None, "num_layers": 19, "num_single_layers": 38,
                "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
                "pooled_projection_dim": 768, "axes_dims_rope": (16, 56, 56)}

FULL_SIZE_TRANSFORMERS: dict[str, dict] = {
    "sd3-medium": {**_SD3_COMMON, "num_layers": 24, "num_attention_heads": 24, "caption_projection_dim": 1536,
                   "pos_embed_max_size": 192, "dual_attention_layers": (), "qk_norm": None},
    "sd3.5-medium": {**_SD3_COMMON, "num_layers": 24, "num_attention_heads": 24, "caption_projection_dim": 1536,
                     "pos_embed_max_size": 384, "dual_attention_layers": tuple(range(13)), "qk_norm": "rms_norm"},
    "sd3.5-large": {**_SD3_COMMON, "num_layers": 38, "num_attention_heads": 38, "caption_projection_dim": 2432,
                    "pos_embed_max_size": 192, "dual_attention_layers": (), "qk_norm": "rms_norm"},
    "flux.1-dev": {**_FLUX_COMMON, "guidance_embeds": True},
    "flux.1-schnell": {**_FLUX_COMMON, "guidance_embeds": False},
}

_CLIP_L, _CLIP_G, _T5 = 32, 48, 96
_T5_SPECIALS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in T5


def meta_transformer(name: str):
    """The full-size transformer `name` (a FULL_SIZE_TRANSFORMERS key) built on the meta device: names and shapes,
    no memory."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    if name not in FULL_SIZE_TRANSFORMERS:
        raise ValueError(f"unknown transformer {name!r}; expected one of {', '.join(FULL_SIZE_TRANSFORMERS)}")
    cls = FluxTransformer2DModel if name.startswith("flux") else SD3Transformer2DModel
    with torch.device("meta"):
        return cls(**FULL_SIZE_TRANSFORMERS[name])


def write_t5_tokenizer_files(directory: str | Path, words: list[str] = (), model_max_length: int = 512) -> Path:
    """Write a T5 tokenizer (tokenizer.json + config) made in code: a Unigram model over the printable ASCII
    characters, alone and word-initial, plus whole words for `words`; pad/eos/unk at ids 0/1/2 and `</s>` appended,
    as T5's sentencepiece tokenizer does. Any text tokenizes; other characters become <unk>."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    chars = [c for c in string.printable if not c.isspace()]
    pieces = [(t, 0.0) for t in _T5_SPECIALS] + [("▁", -2.0)]
    # whole words score higher than their spelling so the Viterbi split keeps them whole
    pieces += [("▁" + w, -1.0) for w in sorted({w.lower() for w in words if w.isascii() and w.isalnum()})]
    pieces += [("▁" + c, -4.0) for c in chars] + [(c, -5.0) for c in chars]
    unique: dict[str, float] = {}
    for piece, score in pieces:
        unique.setdefault(piece, score)
    tok = Tokenizer(Unigram(list(unique.items()), unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"],
                                                       special_tokens=[("</s>", 1)])
    tok.save(str(directory / "tokenizer.json"))
    specials = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    (directory / "special_tokens_map.json").write_text(json.dumps(specials), encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "T5Tokenizer", "model_max_length": model_max_length, "extra_ids": 0, **specials,
    }), encoding="utf-8")
    return directory


def _tokenizers(scratch: Path, words, clip: bool = True, t5: bool = True):
    from transformers import CLIPTokenizer, T5TokenizerFast

    clip_tok = CLIPTokenizer.from_pretrained(str(write_tokenizer_files(scratch / "clip", words))) if clip else None
    t5_tok = T5TokenizerFast.from_pretrained(str(write_t5_tokenizer_files(scratch / "t5", words))) if t5 else None
    return clip_tok, t5_tok


def _clip(tokenizer, width: int, projection: bool, hidden_act: str):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        hidden_size=width, intermediate_size=width * 2, num_attention_heads=4, num_hidden_layers=3,
        vocab_size=len(tokenizer), max_position_embeddings=77, projection_dim=width, hidden_act=hidden_act,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def _t5(tokenizer):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(d_model=_T5, d_kv=8, d_ff=2 * _T5, num_layers=2, num_heads=4, vocab_size=len(tokenizer),
                   feed_forward_proj="gated-gelu", relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                   decoder_start_token_id=0)
    return T5EncoderModel(cfg)


def _vae(factors: tuple[float, float]):
    from diffusers import AutoencoderKL

    scaling, shift = factors
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=8, sample_size=32, scaling_factor=scaling, shift_factor=shift,
        use_quant_conv=False, use_post_quant_conv=False,
    )


def _check_variant(variant: str, allowed: tuple[str, ...]) -> None:
    if variant not in allowed:
        raise ValueError(f"unknown variant {variant!r}; expected {' or '.join(allowed)}")


def tiny_sd3_pipeline(variant: str = "sd3.5", seed: int = 0, words: list[str] = ()):
    """A tiny `StableDiffusion3Pipeline` with seeded random weights; `variant` 'sd3' (plain MMDiT, as SD3 Medium)
    or 'sd3.5' (block 0 with dual attention and RMS qk-norm, as SD3.5 Medium). Default image size 32 px."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    _check_variant(variant, ("sd3", "sd3.5"))
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as scratch:
        clip_tok, t5_tok = _tokenizers(Path(scratch), words)
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=_T5,
        pooled_projection_dim=_CLIP_L + _CLIP_G, pos_embed_max_size=32,
        dual_attention_layers=(0,) if variant == "sd3.5" else (), qk_norm="rms_norm" if variant == "sd3.5" else None,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER_CONFIG),
        vae=_vae(SD3_VAE_FACTORS),
        text_encoder=_clip(clip_tok, _CLIP_L, projection=True, hidden_act="quick_gelu"), tokenizer=clip_tok,
        text_encoder_2=_clip(clip_tok, _CLIP_G, projection=True, hidden_act="gelu"), tokenizer_2=clip_tok,
        text_encoder_3=_t5(t5_tok), tokenizer_3=t5_tok,
    )


def tiny_flux_pipeline(variant: str = "dev", seed: int = 0, words: list[str] = ()):
    """A tiny `FluxPipeline` with seeded random weights; `variant` 'dev' (guidance embedding) or 'schnell'.
    The transformer takes 2x2-packed latents (in_channels = 4 x 16). Pass height/width (e.g. 32) when generating:
    FluxPipeline's default size is fixed at 1024 px."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    _check_variant(variant, ("dev", "schnell"))
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as scratch:
        clip_tok, t5_tok = _tokenizers(Path(scratch), words)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=_T5, pooled_projection_dim=_CLIP_L,
        guidance_embeds=variant == "dev", axes_dims_rope=(4, 6, 6),
    )
    return FluxPipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG),
        vae=_vae(FLUX_VAE_FACTORS),
        text_encoder=_clip(clip_tok, _CLIP_L, projection=False, hidden_act="quick_gelu"), tokenizer=clip_tok,
        text_encoder_2=_t5(t5_tok), tokenizer_2=t5_tok,
    )


def build_tiny_sd3(out_dir: str | Path, variant: str = "sd3.5", seed: int = 0, words: list[str] = ()) -> Path:
    """Save `tiny_sd3_pipeline(variant, seed, words)` as a diffusers folder that
    `StableDiffusion3Pipeline.from_pretrained` loads offline; returns the folder."""
    out_dir = Path(out_dir)
    tiny_sd3_pipeline(variant, seed=seed, words=words).save_pretrained(str(out_dir))
    return out_dir


def build_tiny_flux(out_dir: str | Path, variant: str = "dev", seed: int = 0, words: list[str] = ()) -> Path:
    """Save `tiny_flux_pipeline(variant, seed, words)` as a diffusers folder that `FluxPipeline.from_pretrained`
    loads offline; returns the folder."""
    out_dir = Path(out_dir)
    tiny_flux_pipeline(variant, seed=seed, words=words).save_pretrained(str(out_dir))
    return out_dir
