"""Captions per second of full-size captioner architectures with random weights, through `caption_folder`.

    nice -n 10 .venv/bin/python scripts/benchmark_caption.py [--arch blip-base,florence2-base] [--images 8]
        [--batch-sizes 1,4] [--new-tokens 40] [--threads 2] [--device cpu|cuda]

The model is built from its published configuration (BLIP-base: ViT-B/16 at 384 px + BERT-base decoder;
Florence-2-base: DaViT at 768 px + BART-base), saved, and loaded the way a user's download is, with a word-level
tokenizer of the same vocabulary size. Random weights never stop on their own, so every caption is exactly
--new-tokens long (end-of-text suppressed): the time per caption is that of a caption of that length. Greedy
decoding (num_beams 1) and beam search (3, the default) are both measured. Loading is timed apart.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _tokenizer(size: int, special: list[str], **named):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {s: i for i, s in enumerate(special)}
    for i in range(size - len(vocab)):
        vocab[f"w{i}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=named["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tok, **named)


def _fixed_length(model, tok) -> None:
    model.generation_config.eos_token_id = None
    model.generation_config.forced_eos_token_id = None
    model.generation_config.suppress_tokens = sorted(set(tok.all_special_ids))


def save_blip_base(folder: Path) -> int:
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessorPil, BlipProcessor

    tok = _tokenizer(30524, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"], pad_token="[PAD]",
                     unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]", bos_token="[DEC]")
    config = BlipConfig(text_config=dict(vocab_size=30524, bos_token_id=5, pad_token_id=0, sep_token_id=3,
                                         eos_token_id=3),
                        vision_config=dict(image_size=384, patch_size=16))  # Salesforce/blip-image-captioning-base
    model = BlipForConditionalGeneration(config).eval()
    _fixed_length(model, tok)
    model.save_pretrained(folder)
    BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": 384, "width": 384}),
                  tokenizer=tok).save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def save_florence2_base(folder: Path) -> int:
    from transformers import (CLIPImageProcessorPil, Florence2Config, Florence2ForConditionalGeneration,
                              Florence2Processor)

    tok = _tokenizer(51289, ["<pad>", "<s>", "</s>", "<unk>", "<image>"], pad_token="<pad>", unk_token="<unk>",
                     bos_token="<s>", eos_token="</s>", extra_special_tokens={"image_token": "<image>"})
    config = Florence2Config(  # florence-community/Florence-2-base
        vision_config=dict(embed_dim=[128, 256, 512, 1024], num_heads=[4, 8, 16, 32], num_groups=[4, 8, 16, 32],
                           depths=[1, 1, 9, 1], window_size=12, projection_dim=768, drop_path_rate=0.0),
        text_config=dict(model_type="bart", vocab_size=51289, d_model=768, encoder_layers=6, decoder_layers=6,
                         encoder_attention_heads=12, decoder_attention_heads=12, encoder_ffn_dim=3072,
                         decoder_ffn_dim=3072, max_position_embeddings=1024, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2, decoder_start_token_id=2, forced_bos_token_id=None),
        image_token_id=4)
    model = Florence2ForConditionalGeneration(config).eval()
    _fixed_length(model, tok)
    model.save_pretrained(folder)
    images = CLIPImageProcessorPil(size={"height": 768, "width": 768}, do_center_crop=False, crop_size=None)
    images.image_seq_length = 577  # (768 / 32)^2 patches + the pooled token
    Florence2Processor(image_processor=images, tokenizer=tok).save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


ARCHS = {"blip-base": ("blip", save_blip_base, None), "florence2-base": ("florence2", save_florence2_base, "<CAPTION>")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="blip-base,florence2-base")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--beams", default="1,3")
    parser.add_argument("--new-tokens", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from sd_lora.captioning.captioner import CaptionerSettings, load_captioner
    from sd_lora.captioning.run import CaptionJob, caption_folder

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "photos"
        data.mkdir()
        rng = np.random.default_rng(0)
        for i in range(args.images):  # photo-sized inputs: decoding and resizing are part of the cost
            Image.fromarray(rng.integers(0, 255, (768, 1024, 3), dtype=np.uint8)).save(data / f"{i:03d}.jpg")
        for arch in args.arch.split(","):
            backend, build, prompt = ARCHS[arch]
            folder = Path(tmp) / arch
            params = build(folder)
            for beams in (int(b) for b in args.beams.split(",")):
                for bs in (int(b) for b in args.batch_sizes.split(",")):
                    t0 = time.perf_counter()
                    captioner = load_captioner(CaptionerSettings(
                        backend=backend, model=str(folder), prompt=prompt, batch_size=bs, num_beams=beams,
                        max_new_tokens=args.new_tokens, device=args.device))
                    load_s = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    report = caption_folder(CaptionJob(data, mode="overwrite"), captioner)
                    run_s = time.perf_counter() - t0
                    n = len(report.written)
                    rows.append((arch, f"{params / 1e6:.0f}M", captioner.device, captioner.dtype, beams, bs, n,
                                 load_s, run_s, n / run_s))
                    del captioner
    header = ("arch", "params", "device", "dtype", "beams", "batch", "images", "load s", "caption s", "captions/s")
    print(f"torch threads {args.threads}, {args.new_tokens} new tokens per caption, {args.images} images 1024x768")
    print(" | ".join(header))
    for r in rows:
        print(" | ".join([*map(str, r[:7]), f"{r[7]:.1f}", f"{r[8]:.1f}", f"{r[9]:.3f}"]))


if __name__ == "__main__":
    main()
