"""`sd-lora generate`: images from prompts with LoRA adapters mixed at chosen weights.

    sd-lora generate --model builtin:tiny --lora style.safetensors:0.8 --prompt "a cat" --seed 1-4
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import tempfile
from pathlib import Path
from typing import Iterator

from sd_lora.errors import SdLoraError

__all__ = ["add_parser", "run"]


def add_parser(subparsers, name: str) -> None:
    p = subparsers.add_parser(name, help="generate images with LoRA adapters",
                              description="Generate images (SD1/SD2/SDXL) with adapters at adjustable weights.")
    p.add_argument("--model", default=None, help="diffusers directory, hub id, or builtin:NAME (default: builtin:tiny; "
                                                 "with --recipe: the recorded base model)")
    p.add_argument("--recipe", metavar="ADAPTER.safetensors|IMAGE.png",
                   help="regenerate the training samples an adapter records (all) or a sample PNG records (that one)")
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
    p.add_argument("--width", type=int, help="default: the size the first --lora was trained at, else the model's own")
    p.add_argument("--height", type=int, help="default: as --width")
    p.add_argument("--clip-skip", type=int, help="AUTOMATIC1111 count: 1 = last layer, 2 = penultimate (default: "
                                                  "the first --lora's training clip skip)")
    p.add_argument("--guidance-rescale", type=float, help="diffusers' guidance rescale, 0-1 (default: what the first "
                                                          "--lora was sampled with, e.g. 0.7 with zero-terminal SNR)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--fuse", action="store_true", help="merge the --lora adapters into the weights (no overhead)")
    p.add_argument("--sweep", action="store_true", help="one labelled grid: each --lora × --sweep-scales, same seed")
    p.add_argument("--sweep-scales", default="0,0.25,0.5,0.75,1.0")
    p.add_argument("--out", default="outputs", help="output folder")
    p.add_argument("--no-grid", action="store_true", help="skip the contact sheet")
    p.add_argument("--allow-pickle", action="store_true", help="allow .ckpt/.pt adapter files (runs code in them)")


_CLIP_SKIP_MAX = 12  # AUTOMATIC1111's range (CLIP ViT-L has 12 layers); the model's own count is checked too
_GRID_MAX = 256  # images kept for the contact sheet; a longer run writes its images without one


def _seed_ranges(args) -> list[range]:
    from sd_lora.inference.prompts import parse_seed_ranges

    if args.seed is None:
        seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
        return [range(seed, seed + 1)]
    return parse_seed_ranges(args.seed)


def _specs(args):
    from sd_lora.inference.prompts import parse_prompt, prompt_spec, read_prompt_file

    specs = [prompt_spec(p, "--prompt") for p in args.prompt]
    if args.prompt_file:
        specs += read_prompt_file(args.prompt_file)
    if not specs:
        raise SdLoraError("give at least one --prompt or a --prompt-file")
    for spec in specs:
        parse_prompt(spec.prompt)  # malformed <lora:...> tags fail before the model loads
        if spec.guidance is not None and not math.isfinite(spec.guidance):
            raise SdLoraError(f"prompt {spec.prompt!r}: guidance {spec.guidance!r} is not a finite number")
    return specs


def _check_lora_names(args, loras, specs) -> None:
    """Every adapter name resolves (prompt names only inside --lora-dir) before the model loads."""
    from sd_lora.inference import AdapterSet
    from sd_lora.inference.prompts import parse_prompt

    names = AdapterSet(None, lora_dir=args.lora_dir)
    for ref in [*loras, *(r for spec in specs for r in [*spec.loras, *parse_prompt(spec.prompt)[1]])]:
        names.resolve(ref.name, ref.in_folder)


def _check_args(args) -> None:
    """Everything about the command line that can be wrong, before any model loads."""
    for flag, value in (("--width", args.width), ("--height", args.height)):
        if value is not None and (value <= 0 or value % 8):
            raise SdLoraError(f"{flag} {value} is not a positive multiple of 8; use e.g. {max(8, value // 8 * 8)}")
    if not math.isfinite(args.guidance):
        raise SdLoraError(f"--guidance {args.guidance!r} is not a finite number; use e.g. 7")
    if args.steps < 1:
        raise SdLoraError(f"--steps must be at least 1, got {args.steps}")
    if args.images_per_prompt < 1 or args.batch_size < 1:
        raise SdLoraError("--images-per-prompt and --batch-size must be at least 1")
    if args.clip_skip is not None and not 1 <= args.clip_skip <= _CLIP_SKIP_MAX:
        raise SdLoraError(f"--clip-skip {args.clip_skip} is out of range; use 1 (last layer, the default) to "
                          f"{_CLIP_SKIP_MAX}, AUTOMATIC1111's count (2 = penultimate)")


def _sweep_scales(args) -> list[float]:
    from sd_lora.inference.prompts import check_weight

    scales = []
    for text in args.sweep_scales.split(","):
        try:
            scales.append(check_weight(float(text), "--sweep-scales"))
        except ValueError:
            raise SdLoraError(f"--sweep-scales: {text.strip()!r} is not a number; write e.g. 0,0.5,1") from None
    return scales


def _check_out(out: Path) -> None:
    """--out must be a folder sd-lora can write to; found out now, not after the model loaded. Nothing is
    created here (the folder is made when the first image is saved)."""
    if out.exists() and not out.is_dir():
        raise SdLoraError(f"--out {out} is a file, not a folder; give a folder (it is created if missing)")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise SdLoraError(f"--out {out}: {existing} is a file, so the folder cannot be created; choose another --out")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise SdLoraError(f"--out {out}: cannot write to {existing} ({e.strerror or e}); choose a folder you can "
                          "write to") from None


def _requests(args, specs, ranges, global_loras) -> tuple[int, Iterator, list]:
    """(number of images, a generator of the requests, one request per prompt): a seed range is never
    expanded into a list."""
    from sd_lora.inference import GenerationRequest
    from sd_lora.inference.prompts import SEED_MAX

    n = args.images_per_prompt
    top = max(r[-1] for r in ranges) + n - 1
    if top > SEED_MAX:
        raise SdLoraError(f"--seed with --images-per-prompt {n} reaches seed {top}, above the largest seed {SEED_MAX}")
    count = sum((1 if spec.seed is not None else sum(len(r) for r in ranges)) * n for spec in specs)

    def request(spec, seed):
        return GenerationRequest(
            prompt=spec.prompt, seed=seed,
            negative_prompt=args.negative_prompt if spec.negative_prompt is None else spec.negative_prompt,
            steps=spec.steps or args.steps, guidance=args.guidance if spec.guidance is None else spec.guidance,
            width=spec.width or args.width, height=spec.height or args.height,
            loras=list(global_loras) + list(spec.loras), clip_skip=args.clip_skip,
            guidance_rescale=args.guidance_rescale or 0.0)

    def generate():
        for spec in specs:
            for seed in ([spec.seed] if spec.seed is not None else itertools.chain.from_iterable(ranges)):
                for k in range(n):
                    yield request(spec, seed + k)

    firsts = [request(spec, spec.seed if spec.seed is not None else ranges[0].start) for spec in specs]
    return count, generate(), firsts


def _adapter_defaults(args, loras) -> dict:
    """Clip skip, zero-terminal SNR and guidance rescale from the first --lora trained by sd-lora, unless given."""
    from sd_lora.inference.recipes import adapter_defaults

    found = adapter_defaults([Path(ref.name) for ref in loras])
    if args.clip_skip is None and found.get("clip_skip", 1) > 1:
        args.clip_skip = found["clip_skip"]
    if args.width is None and args.height is None and found.get("resolution"):
        args.width, args.height = found["resolution"]  # the size it was trained at, not the model's default
    if args.guidance_rescale is None:
        args.guidance_rescale = found.get("guidance_rescale", 0.0)
    elif not (math.isfinite(args.guidance_rescale) and 0 <= args.guidance_rescale <= 1):
        raise SdLoraError(f"--guidance-rescale {args.guidance_rescale!r} must be between 0 and 1")
    return found


def _warn_zero_snr(on: bool | None, info) -> None:
    if on and info.prediction_type == "epsilon":
        print("warning: the adapter was trained with zero-terminal SNR, but the base model predicts epsilon; "
              "zero-terminal SNR needs a v-prediction model")


def _run_recipe(args) -> int:
    """Regenerate recorded training samples: the recorded base model (or --model), dtype, sampler and settings."""
    from sd_lora.inference import AdapterSet, iter_images, load_generation_pipeline, set_scheduler
    from sd_lora.inference.hashes import base_model_hash
    from sd_lora.inference.recipes import read_recipes, recipe_request

    recipes = read_recipes(args.recipe)
    out = Path(args.out)
    _check_out(out)
    first = recipes[0][0]
    model = args.model or (first["base_model_location"] if Path(first["base_model_location"]).exists()
                           else first["base_model"])
    dtype = first.get("dtype", "fp32") if args.dtype == "auto" else args.dtype
    pipe, info = load_generation_pipeline(model, device=args.device, dtype=dtype)
    if first.get("base_model_hash") and base_model_hash(info.location) != first["base_model_hash"]:
        print(f"warning: {model} is not the base model the samples were rendered with (its hash differs); "
              "the images will differ")
    _warn_zero_snr(first.get("zero_terminal_snr"), info)
    adapters = AdapterSet(pipe, family=info.family, allow_pickle=args.allow_pickle)
    start, written = _next_index(out), 0
    for record, adapter in recipes:
        set_scheduler(pipe, record["sampler"], record.get("zero_terminal_snr", False))
        for im in iter_images(pipe, [recipe_request(record, adapter)], adapters=adapters, progress=False):
            _save(im, out / f"{start + written:05d}-{im.request.seed}.png", info)
            written += 1
    print(f"wrote {written} image(s) to {out} from the recipes in {args.recipe}")
    return 0


def _next_index(out: Path) -> int:
    numbers = [int(p.name[:5]) for p in out.glob("*.png") if p.name[:5].isdigit()]
    return max(numbers, default=-1) + 1


def _save(im, path: Path, info, fused_hashes: dict | None = None) -> Path:
    """The PNG with AUTOMATIC1111 parameters (base model hash; fused adapters' hashes) and its JSON sidecar."""
    from sd_lora.inference import format_parameters, image_record, save_png
    from sd_lora.inference.hashes import base_model_hash

    extra = {"Model hash": h[:10]} if (h := base_model_hash(info.location)) else {}
    return save_png(path, im.image, format_parameters(im, info.name, extra, fused_hashes),
                    image_record(im, info.name, info.family))


def _grid(images, out: Path, stem: str, **kwargs) -> Path:
    from sd_lora.inference import make_grid, save_png

    grid = make_grid([im.image for im in images], **kwargs)
    return save_png(out / f"{stem}.png", grid, extra_text={"sd-lora-grid": grid.info["grid"]})


def run(args: argparse.Namespace) -> int:
    from sd_lora.inference import AdapterSet, canonical_scheduler, iter_images, load_generation_pipeline, \
        parse_lora_arg, set_scheduler, sweep_requests
    from sd_lora.inference.generate import check_requests
    from sd_lora.inference.prompts import one_scheduler

    if args.recipe:
        return _run_recipe(args)
    args.model = args.model or "builtin:tiny"
    # every check that needs no model comes first: a typo costs milliseconds, not a model load
    scheduler = canonical_scheduler(args.scheduler)
    _check_args(args)
    sweep_scales = _sweep_scales(args) if args.sweep else []
    if args.sweep and (args.fuse or not args.lora):
        raise SdLoraError("--sweep needs one or more --lora and cannot be combined with --fuse")
    loras = [parse_lora_arg(text) for text in args.lora]
    defaults = _adapter_defaults(args, loras)
    specs, ranges = _specs(args), _seed_ranges(args)
    _check_lora_names(args, loras, specs)
    scheduler = canonical_scheduler(one_scheduler(specs, scheduler))  # kohya's --ss in the prompts
    out = Path(args.out)
    _check_out(out)
    count, requests, firsts = _requests(args, specs, ranges, [] if (args.fuse or args.sweep) else loras)
    pipe, info = load_generation_pipeline(args.model, device=args.device, dtype=args.dtype)
    _warn_zero_snr(defaults.get("zero_terminal_snr"), info)
    set_scheduler(pipe, scheduler, defaults.get("zero_terminal_snr", False))
    adapters = AdapterSet(pipe, family=info.family, lora_dir=args.lora_dir, allow_pickle=args.allow_pickle)
    files = adapters.load([ref.name for ref in loras])
    if args.sweep:
        requests = sweep_requests(next(requests), [ref.name for ref in loras], sweep_scales)
        count = len(requests)
    else:  # one request per prompt stands for all its seeds: LoRA files and families fail before any image
        check_requests(pipe, firsts, adapters=adapters)
    fused_hashes = None
    if args.fuse:
        adapters.fuse([(f, ref.weight) for f, ref in zip(files, loras)])
        fused_hashes = {Path(f).stem: adapters.hash(f) for f in files}
    start, images, written = _next_index(out), [], 0
    keep = args.sweep or (not args.no_grid and 1 < count <= _GRID_MAX)
    # Saved as each batch finishes, so an interrupted run keeps what it made.
    for i, im in enumerate(iter_images(pipe, requests, adapters=adapters, batch_size=args.batch_size)):
        path = out / f"{start + i:05d}-{im.request.seed}.png"
        try:
            _save(im, path, info, fused_hashes)
        except OSError as e:
            raise SdLoraError(f"cannot write {path} ({e.strerror or e}); {written} image(s) were written to {out} "
                              "before it; free space or choose another --out") from None
        written += 1
        if keep:
            images.append(im)
    stem = f"{start:05d}"
    if args.sweep:
        grid = _grid(images, out, f"sweep-{stem}", cols=len(sweep_scales), row_labels=[r.name for r in loras],
                     col_labels=[f"{s:g}" for s in sweep_scales])
    elif keep and len(images) > 1:
        grid = _grid(images, out, f"grid-{stem}", labels=[f"{im.prompt} (seed {im.request.seed})" for im in images])
    else:
        grid = None
    note = f" (no grid for more than {_GRID_MAX} images)" if not args.no_grid and count > _GRID_MAX else ""
    print(f"wrote {written} image(s) to {out}" + (f"; grid {grid}" if grid else note))
    return 0
