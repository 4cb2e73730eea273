"""Tiny pipelines, built offline in seconds: each family builds its own (`Family.build_tiny`); this module holds
the offline CLIP tokenizer and text encoder they share. Tests and the offline demo use them; nothing downloads.
"""

from __future__ import annotations

import json
from pathlib import Path

from sd_lora.models.families import DEFAULT_FAMILY

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


def build_tiny_pipeline(family: str = DEFAULT_FAMILY, seed: int = 0, words: list[str] = (),
                        tmp_dir: str | Path | None = None):
    """A tiny diffusers pipeline of `family` with seeded random weights, built by the family."""
    from sd_lora.models.families import get_family

    return get_family(family).build_tiny(seed=seed, words=words, tmp_dir=tmp_dir)


def save_tiny_pipeline(out_dir: str | Path, family: str = DEFAULT_FAMILY, seed: int = 0, words: list[str] = ()) -> Path:
    """Build a tiny pipeline and save it as a diffusers directory that loads offline."""
    out_dir = Path(out_dir)
    build_tiny_pipeline(family, seed=seed, words=words).save_pretrained(str(out_dir))
    return out_dir
