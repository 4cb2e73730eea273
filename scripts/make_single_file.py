"""Write a Stable Diffusion model as one original-layout (LDM / SGM) `.safetensors` checkpoint.

    .venv/bin/python scripts/make_single_file.py --tiny sd1 --out tiny_sd1.safetensors
    .venv/bin/python scripts/make_single_file.py --from path/to/diffusers_dir --out model.safetensors

The file has the key layout most users hold (`model.diffusion_model.*`, `first_stage_model.*`,
`cond_stage_model.*` / `conditioner.embedders.*`) and loads with `model.pretrained = "<file>"`.
By default sd-lora's exact configs go into the metadata (and the tokenizer, when it is not CLIP's);
--plain leaves them out, as in files from other tools, so the loader derives configs from shapes.
Then it loads the file back and checks every tensor against the source.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sd_lora.models.load import detect_family  # noqa: E402
from sd_lora.models.families.unet_single_file import load_single_file_pipeline, save_single_file  # noqa: E402
from sd_lora.models.tiny import build_tiny_pipeline  # noqa: E402


def _source(args):
    if args.tiny:
        return build_tiny_pipeline(args.tiny, seed=args.seed), args.tiny, True
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(args.source, local_files_only=True, safety_checker=None)
    components = {k: None for k in pipe.components}
    return pipe, detect_family(components, dict(pipe.unet.config)), False


def _check(pipe, path: Path, tokenizer_dir: str | None) -> int:
    loaded, _ = load_single_file_pipeline(str(path), tokenizer_dir=tokenizer_dir)
    bad = 0
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if getattr(pipe, name, None) is None:
            continue
        got = getattr(loaded, name).state_dict()
        for key, value in getattr(pipe, name).state_dict().items():
            bad += not torch.equal(value, got[key].to(value.dtype))
    return bad


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--tiny", choices=("sd1", "sd2", "sdxl"), help="write sd-lora's tiny model of this family")
    src.add_argument("--from", dest="source", help="a diffusers model directory")
    parser.add_argument("--out", required=True, help="the .safetensors file to write")
    parser.add_argument("--plain", action="store_true", help="store no sd-lora configs in the metadata")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tiny model's random weights")
    args = parser.parse_args(argv)

    pipe, family, tiny = _source(args)
    out = save_single_file(pipe, args.out, family, store_config=not args.plain)
    tokenizer_dir = None
    if args.plain and tiny:  # a tiny vocabulary is not CLIP's and is not stored: hand the loader the tokenizer
        tokenizer_dir = str(out.with_suffix("")) + "_tokenizer"
        pipe.tokenizer.save_pretrained(tokenizer_dir)
    bad = _check(pipe, out, tokenizer_dir)
    size = out.stat().st_size / 2**20
    print(f"wrote {out} ({family}, {size:.1f} MiB); loaded back: {'all tensors equal' if not bad else f'{bad} differ'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
