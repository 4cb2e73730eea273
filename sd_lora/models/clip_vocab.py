"""CLIP's BPE tokenizer files, built offline from the merge list shipped with sd-lora.

A single-file checkpoint holds no tokenizer, and every SD family tokenizes with OpenAI CLIP's
vocabulary (SD2 and SDXL's second encoder differ only in padding with "!", as OpenCLIP does).
`clip_bpe_simple_vocab_16e6.txt.gz` is that merge list, MIT-licensed; its source and notice are
in `clip_vocab_NOTICE.txt`. vocab.json and merges.txt are derived from it the way CLIP does.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

from sd_lora.fileio import atomic_write_text

__all__ = ["CLIP_VOCAB_SIZE", "BPE_PATH", "clip_vocab_and_merges", "write_tokenizer_dir", "write_clip_tokenizer"]

BPE_PATH = Path(__file__).resolve().parent / "clip_bpe_simple_vocab_16e6.txt.gz"
CLIP_VOCAB_SIZE = 49408
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"
# CLIP keeps the first 49152 - 256 - 2 merges so the vocabulary ends at 49408 with the two specials.
_N_MERGES = CLIP_VOCAB_SIZE - 2 * 256 - 2


def _byte_alphabet() -> list[str]:
    # Byte-level BPE: printable bytes stand for themselves, the others for code points from 256 up.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    chars = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(extra)}
    return [chars[b] for b in printable + extra]


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], tuple[str, ...]]:
    """CLIP's token -> id map (49408 entries) and its merge rules ("a b" strings), in order."""
    lines = gzip.open(BPE_PATH, "rt", encoding="utf-8").read().split("\n")
    merges = tuple(lines[1:1 + _N_MERGES])  # line 0 is the version header
    alphabet = _byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet] + [m.replace(" ", "") for m in merges] + [_BOS, _EOS]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def write_tokenizer_dir(directory: str | Path, vocab: dict[str, int], merges, pad_token: str,
                        max_length: int = 77) -> Path:
    """Write a CLIPTokenizer directory (vocab.json, merges.txt, special tokens) that loads offline."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    specials = {"bos_token": _BOS, "eos_token": _EOS, "unk_token": _EOS, "pad_token": pad_token}
    atomic_write_text(directory / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    atomic_write_text(directory / "merges.txt", "#version: 0.2\n" + "".join(m + "\n" for m in merges))
    atomic_write_text(directory / "special_tokens_map.json", json.dumps(specials))
    atomic_write_text(directory / "tokenizer_config.json", json.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": max_length, "do_lower_case": True, **specials}))
    return directory


def write_clip_tokenizer(directory: str | Path, pad_token: str = _EOS) -> Path:
    """The real CLIP tokenizer: pad with "<|endoftext|>" (SD1, SDXL's first) or "!" (SD2, SDXL's second)."""
    vocab, merges = clip_vocab_and_merges()
    return write_tokenizer_dir(directory, vocab, merges, pad_token)
