"""`sd-lora generate`: images from prompts with LoRA adapters mixed at chosen weights.

    sd-lora generate --model builtin:tiny --lora style.safetensors:0.8 --prompt "a cat" --seed 1-4
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sd_lora.errors import SdLoraError

__all__ = ["add_parser", "run"]


def add_parser(subparsers, name: str) -> None:
    p = subparsers.add_parser(name, help="generate images with LoRA adapters",
                              description="Generate images (SD1/SD2/SDXL) with adapters at adjustable weights.")
    p.add_argument("--model", default="builtin:tiny", help="diffusers directory, hub id, or builtin:NAME")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                   help="adapter for every prompt (repeatable); a bare name is looked up in --lora-dir")
    p.add_argument("--lora-dir", help="folder where <lora:NAME:W> tags and bare --lora names are looked up")
    p.add_argument("--prompt", action="append", default=[], help="prompt (repeatable); may hold <lora:NAME:W> tags")
    p.add_argument("--prompt-file", help="one prompt a line, or JSONL with prompt/negative_prompt/seed/steps/"
                                         "guidance/width/height/loras per line")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--seed", default=None, help="seed, range 1-4 or list 1,5,9 (default: random, recorded)")
    p.add_argument("--images-per-prompt", type=int, default=1, help="images per prompt and seed (seeds count up)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=7.0, help="classifier-free guidance scale (CFG)")
    p.add_argument("--scheduler", default="Euler a", help="Euler, Euler a, DPM++ 2M, DPM++ 2M Karras, DDIM, UniPC, ...")
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--clip-skip", type=int, help="AUTOMATIC1111 count: 1 = last layer, 2 = penultimate")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--fuse", action="store_true", help="merge the --lora adapters into the weights (no overhead)")
    p.add_argument("--sweep", action="store_true", help="one labelled grid: each --lora × --sweep-scales, same seed")
    p.add_argument("--sweep-scales", default="0,0.25,0.5,0.75,1.0")
    p.add_argument("--out", default="outputs", help="output folder")
    p.add_argument("--no-grid", action="store_true", help="skip the contact sheet")
    p.add_argument("--allow-pickle", action="store_true", help="allow .ckpt/.pt adapter files (runs code in them)")


def _seeds(args) -> list[int]:
    from sd_lora.inference import parse_seeds

    if args.seed is None:
        return [int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF]
    return parse_seeds(args.seed)


def _specs(args):
    from sd_lora.inference.prompts import PromptSpec, read_prompt_file

    specs = [PromptSpec(p) for p in args.prompt]
    if args.prompt_file:
        specs += read_prompt_file(args.prompt_file)
    if not specs:
        raise SdLoraError("give at least one --prompt or a --prompt-file")
    return specs


def _requests(args, global_loras) -> list:
    from sd_lora.inference import GenerationRequest

    seeds, n = _seeds(args), args.images_per_prompt
    if n < 1 or args.batch_size < 1:
        raise SdLoraError("--images-per-prompt and --batch-size must be at least 1")
    requests = []
    for spec in _specs(args):
        base = [spec.seed] if spec.seed is not None else seeds
        for seed in base:
            for k in range(n):
                requests.append(GenerationRequest(
                    prompt=spec.prompt, seed=seed + k,
                    negative_prompt=args.negative_prompt if spec.negative_prompt is None else spec.negative_prompt,
                    steps=spec.steps or args.steps, guidance=args.guidance if spec.guidance is None else spec.guidance,
                    width=spec.width or args.width, height=spec.height or args.height,
                    loras=list(global_loras) + list(spec.loras), clip_skip=args.clip_skip))
    return requests


def _next_index(out: Path) -> int:
    numbers = [int(p.name[:5]) for p in out.glob("*.png") if p.name[:5].isdigit()]
    return max(numbers, default=-1) + 1


def _save(im, path: Path, model: str, family: str) -> Path:
    from sd_lora.inference import format_parameters, image_record, save_png

    return save_png(path, im.image, format_parameters(im, model), image_record(im, model, family))


def _grid(images, out: Path, stem: str, **kwargs) -> Path:
    from sd_lora.inference import make_grid, save_png

    grid = make_grid([im.image for im in images], **kwargs)
    return save_png(out / f"{stem}.png", grid, extra_text={"sd-lora-grid": grid.info["grid"]})


def run(args: argparse.Namespace) -> int:
    from sd_lora.inference import AdapterSet, canonical_scheduler, iter_images, load_generation_pipeline, \
        parse_lora_arg, set_scheduler, sweep_requests

    scheduler = canonical_scheduler(args.scheduler)  # fail before loading anything
    for flag, value in (("--width", args.width), ("--height", args.height)):
        if value is not None and (value <= 0 or value % 8):
            raise SdLoraError(f"{flag} {value} is not a positive multiple of 8; use e.g. {max(8, value // 8 * 8)}")
    sweep_scales = [float(s) for s in args.sweep_scales.split(",")] if args.sweep else []
    if args.sweep and (args.fuse or not args.lora):
        raise SdLoraError("--sweep needs one or more --lora and cannot be combined with --fuse")
    loras = [parse_lora_arg(text) for text in args.lora]
    requests = _requests(args, [] if (args.fuse or args.sweep) else loras)
    pipe, info = load_generation_pipeline(args.model, device=args.device, dtype=args.dtype)
    set_scheduler(pipe, scheduler)
    adapters = AdapterSet(pipe, family=info.family, lora_dir=args.lora_dir, allow_pickle=args.allow_pickle)
    files = adapters.load([ref.name for ref in loras])
    if args.sweep:
        requests = sweep_requests(requests[0], [ref.name for ref in loras], sweep_scales)
    if args.fuse:
        adapters.fuse([(f, ref.weight) for f, ref in zip(files, loras)])
    out = Path(args.out)
    start, images, paths = _next_index(out), [], []
    # Saved as each batch finishes, so an interrupted run keeps what it made.
    for i, im in enumerate(iter_images(pipe, requests, adapters=adapters, batch_size=args.batch_size)):
        paths.append(_save(im, out / f"{start + i:05d}-{im.request.seed}.png", info.name, info.family))
        images.append(im)
    stem = f"{start:05d}"
    if args.sweep:
        grid = _grid(images, out, f"sweep-{stem}", cols=len(sweep_scales), row_labels=[r.name for r in loras],
                     col_labels=[f"{s:g}" for s in sweep_scales])
    elif not args.no_grid and len(images) > 1:
        grid = _grid(images, out, f"grid-{stem}", labels=[f"{im.prompt} (seed {im.request.seed})" for im in images])
    else:
        grid = None
    print(f"wrote {len(paths)} image(s) to {out}" + (f"; grid {grid}" if grid else ""))
    return 0
