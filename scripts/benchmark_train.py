"""Training-step benchmark on the full-size SD1 architecture with random weights (no download).

Columns: seconds per optimiser step and peak memory of
  (a) `sd-lora train`'s step (the real recipe, data loader and all),
  (b) the same work as a bare loop (VAE + text encode under no_grad, UNet fwd+bwd with the same adapters, AdamW),
  (c) a full fine-tune step of the same UNet.
Each column runs in its own process so peak memory is its own. On CUDA it runs bf16 at 512 px by default.

    .venv/bin/python scripts/benchmark_train.py            # CPU: fp32, 256 px, batch 1, rank 16
    .venv/bin/python scripts/benchmark_train.py --steps 5 --full-steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def build_random_sd1(dtype):
    """Full-size SD1 UNet, CLIP-L text encoder and VAE with random weights, plus an offline tokenizer."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from sd_lora.models.architectures import scheduler_config, text_encoder_configs, unet_config, vae_config
    from sd_lora.models.tiny import write_tokenizer_files

    torch.manual_seed(0)
    tok_dir = tempfile.mkdtemp()
    tokenizer = CLIPTokenizer.from_pretrained(str(write_tokenizer_files(tok_dir, ["a", "photo", "of", "cat"])))
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**vae_config("sd1")), text_encoder=CLIPTextModel(CLIPTextConfig(**text_encoder_configs("sd1")[0])),
        tokenizer=tokenizer, unet=UNet2DConditionModel(**unet_config("sd1")),
        scheduler=DDIMScheduler(**scheduler_config("sd1")), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    return pipe.to(dtype=dtype)


def peak_memory_gb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def write_images(folder: Path, n: int, size: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        arr = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text("a photo of a cat")


def run_recipe(args, device, dtype) -> list[float]:
    import sd_lora.train.recipe as recipe_mod
    from sd_lora.config.load import config_from_dict
    from sd_lora.models.load import BaseModelInfo

    pipe = build_random_sd1(torch.float32)
    recipe_mod.load_pipeline = lambda *a, **k: (pipe, BaseModelInfo("random-sd1", "", "sd1", "epsilon", True))
    data_dir = Path(tempfile.mkdtemp()) / "imgs"
    write_images(data_dir, 4, args.resolution)
    cfg = config_from_dict({
        "data": {"dir": str(data_dir), "resolution": args.resolution},
        "network": {"rank": args.rank, "alpha": args.rank},
        "train": {"max_steps": args.steps + 1, "batch_size": 1, "learning_rate": 1e-4,
                  "mixed_precision": args.mixed_precision, "log_every_n_steps": 1000},
    })
    recipe = recipe_mod.LoRARecipe(cfg)
    recipe.setup()
    recipe.train()
    return [b - a for a, b in zip(recipe.step_times, recipe.step_times[1:])]


def run_bare(args, device, dtype, full: bool) -> list[float]:
    from peft import LoraConfig

    pipe = build_random_sd1(torch.float32)
    unet, vae, te = pipe.unet, pipe.vae, pipe.text_encoder
    for m in (unet, vae, te):
        m.requires_grad_(False).to(device)
    if full:
        unet.requires_grad_(True)
    else:
        unet.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, target_modules=TARGETS))
    for m in (unet, te):
        m.to(dtype=dtype)
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    opt = torch.optim.AdamW(params, lr=1e-4)
    ids = pipe.tokenizer(["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids.to(device)
    pixels = torch.rand(1, 3, args.resolution, args.resolution, device=device) * 2 - 1
    times = []
    steps = args.full_steps if full else args.steps
    for _ in range(steps + 1):
        start = time.perf_counter()
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
            hidden = te(ids)[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (1,), device=device)
        noisy = pipe.scheduler.add_noise(latents, noise, t)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            pred = unet(noisy.to(unet.dtype), t, hidden).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times[1:]


def worker(args) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.mixed_precision]
    if args.worker == "recipe":
        times = run_recipe(args, device, dtype)
    else:
        times = run_bare(args, device, dtype, full=args.worker == "full")
    print(json.dumps({"sec_per_step": statistics.median(times), "peak_gb": peak_memory_gb(device),
                      "steps": len(times), "times": times}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    p.add_argument("--resolution", type=int, default=512 if cuda else 256)
    p.add_argument("--mixed-precision", default="bf16" if cuda else "no", choices=["no", "bf16", "fp16"])
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--steps", type=int, default=4, help="timed LoRA steps (after one warm-up step)")
    p.add_argument("--full-steps", type=int, default=2, help="timed full fine-tune steps (slow on CPU)")
    p.add_argument("--only", choices=["recipe", "bare", "full"], action="append")
    p.add_argument("--repeats", type=int, default=1,
                   help="run each column this many times, alternating the order (a, b, b, a, ...) so slow drift of "
                        "a shared machine hits every column alike; the table shows the median over all timed steps")
    p.add_argument("--worker", choices=["recipe", "bare", "full"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    modes = args.only or ["recipe", "bare", "full"]
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for r in range(args.repeats):
        for mode in (modes if r % 2 == 0 else modes[::-1]):
            cmd = [sys.executable, __file__, "--worker", mode, "--resolution", str(args.resolution),
                   "--mixed-precision", args.mixed_precision, "--rank", str(args.rank), "--steps", str(args.steps),
                   "--full-steps", str(args.full_steps)]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if out.returncode:
                sys.exit(f"{mode} failed:\n{out.stderr[-3000:]}")
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    results = {m: {"sec_per_step": statistics.median(t for run in rs for t in run["times"]),
                   "peak_gb": max(run["peak_gb"] for run in rs),
                   "run_medians": [run["sec_per_step"] for run in rs]} for m, rs in runs.items()}
    device = torch.cuda.get_device_name() if cuda else f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"
    print(f"SD1 full-size UNet, random weights, {args.resolution} px, batch 1, LoRA rank {args.rank}, "
          f"mixed precision {args.mixed_precision}, torch {torch.__version__}, {device}")
    names = {"recipe": "(a) sd-lora train step", "bare": "(b) bare loop, same adapters", "full": "(c) full fine-tune"}
    print(f"| {'what':32} | {'s/step':>8} | {'peak GB':>8} |\n|{'-' * 34}|{'-' * 10}|{'-' * 10}|")
    for mode, r in results.items():
        print(f"| {names[mode]:32} | {r['sec_per_step']:8.2f} | {r['peak_gb']:8.2f} |")
    if args.repeats > 1:
        for mode, r in results.items():
            print(f"{names[mode]}: per-run medians " + ", ".join(f"{t:.2f}" for t in r["run_medians"]))
    if {"recipe", "bare"} <= results.keys():
        a, b = results["recipe"], results["bare"]
        print(f"(a)/(b) time: {a['sec_per_step'] / b['sec_per_step']:.3f} (target <= 1.05); "
              f"(a)-(b) memory: {a['peak_gb'] - b['peak_gb']:+.2f} GB (target <= 1.0)")
    if {"recipe", "full"} <= results.keys():
        a, c = results["recipe"], results["full"]
        print(f"(c)/(a) time: {c['sec_per_step'] / a['sec_per_step']:.1f}x (target >= 5); "
              f"(a)/(c) memory: {a['peak_gb'] / c['peak_gb']:.2f} (target <= 0.4)")


if __name__ == "__main__":
    main()
