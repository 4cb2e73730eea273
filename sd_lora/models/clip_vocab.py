"""The real CLIP tokenizer, built offline from the merges shipped with sd-lora.

Single-file checkpoints hold no tokenizer, and the hub is not reachable. CLIP's vocabulary
is fully determined by its BPE merges (byte alphabet, the same with `</w>`, one token per
merge, then the two specials), so only the merges ship (sd_lora/models/data/clip_merges.txt.gz).
"""

from __future__ import annotations

import gzip
import json
import tempfile
from importlib import resources
from pathlib import Path

__all__ = ["CLIP_VOCAB_SIZE", "clip_merges", "clip_vocab", "load_clip_tokenizer"]

CLIP_VOCAB_SIZE = 49408


def clip_merges() -> list[str]:
    data = resources.files("sd_lora.models").joinpath("data/clip_merges.txt.gz").read_bytes()
    lines = gzip.decompress(data).decode("utf-8").splitlines()
    return [line for line in lines[1:] if line]


def clip_vocab(merges: list[str]) -> dict[str, int]:
    from sd_lora.models.tiny import _bytes_to_unicode

    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m.split(" ")) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}


def load_clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """CLIPTokenizer with OpenAI CLIP's 49,408-token vocabulary.

    `pad_token`: SD1 (and SDXL's first encoder) pad with `<|endoftext|>`; SD2 and SDXL's
    OpenCLIP encoder were trained padding with `!`, which changes their hidden states.
    """
    from transformers import CLIPTokenizer

    merges = clip_merges()
    specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>", "pad_token": pad_token}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "vocab.json").write_text(json.dumps(clip_vocab(merges)), encoding="utf-8")
        (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        (d / "special_tokens_map.json").write_text(json.dumps(specials), encoding="utf-8")
        (d / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, **specials}), encoding="utf-8")
        return CLIPTokenizer.from_pretrained(str(d))
