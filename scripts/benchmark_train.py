"""Training-step benchmark on the full-size SD1 architecture with random weights (no download).

Columns (seconds per optimiser step, median over timed steps after one warm-up step, and peak RSS):
  default   `sd-lora train` with its default config (caches 'auto': latents and text outputs cached, encoders
            freed, fused AdamW, CPU allocator tuning) - the real recipe, data loader and all;
  nocache   the same with data.cache_latents = false and data.cache_text_encoder_outputs = false;
  bf16      the default config with train.mixed_precision = 'bf16';
  bare      the floor: a minimal loop on the same cached tensors (one latent and one text embedding computed
            before the loop, VAE and text encoder then dropped), UNet LoRA forward + backward + the same fused
            AdamW, same allocator setting; nothing else;
  bare_plain the same bare loop with torch's default AdamW (per-tensor loop) and glibc's default allocator;
  full      a full fine-tune step of the same UNet (bare loop);
  peer      diffusers' examples/text_to_image/train_text_to_image_lora.py, given with --peer-script (not shipped
            in the diffusers wheel; fetch it yourself), on the same random model saved to disk and the same
            images: s/step from two runs of different length, peak RSS of its process, and the whole job time.
Each column runs in its own process so peak memory is its own; --repeats alternates the column order.
On CUDA it runs bf16 at 512 px by default.

    nice .venv/bin/python scripts/benchmark_train.py --only default --only nocache --only bare --repeats 2
    .venv/bin/python scripts/benchmark_train.py --only peer --peer-script ~/diffusers/examples/text_to_image/train_text_to_image_lora.py
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


def run_recipe(args, device, dtype, overrides: dict | None = None) -> list[float]:
    import sd_lora.train.recipe as recipe_mod
    from sd_lora.config.load import config_from_dict
    from sd_lora.models.load import BaseModelInfo

    pipe = build_random_sd1(torch.float32)
    recipe_mod.load_pipeline = lambda *a, **k: (pipe, BaseModelInfo("random-sd1", "", "sd1", "epsilon", True))
    del pipe  # the recipe holds what it keeps (it frees the encoders once their outputs are cached)
    data_dir = Path(tempfile.mkdtemp()) / "imgs"
    write_images(data_dir, max(4, args.batch_size), args.resolution)
    sections = {
        "data": {"dir": str(data_dir), "resolution": args.resolution},
        "network": {"rank": args.rank, "alpha": args.rank},
        "train": {"max_steps": args.steps + 1, "batch_size": args.batch_size, "learning_rate": 1e-4,
                  "mixed_precision": args.mixed_precision, "log_every_n_steps": 1000},
        "output": {"dir": tempfile.mkdtemp(), "log_with": "none", "save_state_at_end": False},
    }
    for section, values in (overrides or {}).items():
        sections[section].update(values)
    recipe = recipe_mod.LoRARecipe(config_from_dict(sections))
    recipe.setup()
    recipe.train()
    recipe.cleanup()
    return [b - a for a, b in zip(recipe.step_times, recipe.step_times[1:])]


def run_bare(args, device, dtype, full: bool, plain: bool = False) -> list[float]:
    """The floor: cached latents and text embedding (computed once, encoders dropped), then UNet fwd+bwd+AdamW."""
    from peft import LoraConfig

    import torch.utils.flop_counter

    from sd_lora.train.memory import tune_cpu_allocator, trim_heap

    if not plain and device.type == "cpu":
        tune_cpu_allocator(True)
    pipe = build_random_sd1(torch.float32)
    unet, scheduler = pipe.unet, pipe.scheduler
    with torch.no_grad():
        pipe.vae.to(device)
        pixels = torch.rand(1, 3, args.resolution, args.resolution, device=device) * 2 - 1
        latents = (pipe.vae.encode(pixels).latent_dist.mode() * pipe.vae.config.scaling_factor).contiguous()
        ids = pipe.tokenizer(["a photo of a cat"], padding="max_length", max_length=77,
                             return_tensors="pt").input_ids.to(device)
        hidden = pipe.text_encoder.to(device)(ids)[0]
    del pipe
    import gc

    gc.collect()
    trim_heap()
    unet.requires_grad_(False).to(device)
    if full:
        unet.requires_grad_(True)
    else:
        unet.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, target_modules=TARGETS))
    unet.to(dtype=dtype)
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    opt = torch.optim.AdamW(params, lr=1e-4, **({} if plain or full else {"fused": True}))
    latents = latents.to(dtype).repeat(args.batch_size, 1, 1, 1)
    hidden = hidden.to(dtype).repeat(args.batch_size, 1, 1)
    global FWD_FLOPS
    with torch.no_grad(), torch.utils.flop_counter.FlopCounterMode(display=False) as counter, \
            torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        unet(latents, torch.zeros(args.batch_size, dtype=torch.long, device=device), hidden)
    FWD_FLOPS = counter.get_total_flops()
    times = []
    steps = args.full_steps if full else args.steps
    for _ in range(steps + 1):
        start = time.perf_counter()
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (args.batch_size,), device=device)
        noisy = scheduler.add_noise(latents, noise, t)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            pred = unet(noisy, t, hidden).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times[1:]


def run_peer(args) -> dict:
    """diffusers' example LoRA script on the same random model and images; two lengths give s/step."""
    import resource as res

    work = Path(tempfile.mkdtemp())
    model_dir, data_dir = work / "model", work / "data"
    build_random_sd1(torch.float32).save_pretrained(model_dir)
    write_images(data_dir, 4, args.resolution)
    with open(data_dir / "metadata.jsonl", "w") as f:
        for i in range(4):
            f.write(json.dumps({"file_name": f"{i}.png", "text": "a photo of a cat"}) + "\n")
    walls = {}
    for steps in (args.peer_steps, 2 * args.peer_steps):
        cmd = [sys.executable, str(args.peer_script), "--pretrained_model_name_or_path", str(model_dir),
               "--train_data_dir", str(data_dir), "--caption_column", "text", "--resolution", str(args.resolution),
               "--train_batch_size", "1", "--max_train_steps", str(steps), "--rank", str(args.rank),
               "--learning_rate", "1e-4", "--lr_scheduler", "constant", "--seed", "0", "--center_crop",
               "--dataloader_num_workers", "0", "--mixed_precision", args.mixed_precision,
               "--output_dir", str(work / f"out{steps}"), "--checkpointing_steps", "1000000"]
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if out.returncode:
            sys.exit(f"peer script failed:\n{out.stderr[-3000:]}")
        walls[steps] = time.perf_counter() - start
    per_step = (walls[2 * args.peer_steps] - walls[args.peer_steps]) / args.peer_steps
    return {"sec_per_step": per_step, "times": [per_step], "whole_job_s": {str(k): v for k, v in walls.items()},
            "peak_gb": res.getrusage(res.RUSAGE_CHILDREN).ru_maxrss / 2**20}


def whole_job(args) -> dict:
    """sd-lora's whole job (load, cache, train, save) for --peer-steps and twice that many steps, in one process."""
    walls = {}
    for steps in (args.peer_steps, 2 * args.peer_steps):
        cmd = [sys.executable, __file__, "--worker", "default", "--resolution", str(args.resolution),
               "--mixed-precision", args.mixed_precision, "--rank", str(args.rank), "--steps", str(steps - 1)]
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if out.returncode:
            sys.exit(out.stderr[-3000:])
        walls[steps] = time.perf_counter() - start
    return walls


FWD_FLOPS = 0  # UNet forward FLOPs of one step, counted by the bare workers (torch.utils.flop_counter)
WORKERS = {
    "default": lambda a, d, t: run_recipe(a, d, t),
    "nocache": lambda a, d, t: run_recipe(a, d, t, {"data": {"cache_latents": False,
                                                             "cache_text_encoder_outputs": False}}),
    "bf16": lambda a, d, t: run_recipe(a, d, torch.bfloat16, {"train": {"mixed_precision": "bf16"}}),
    "bare": lambda a, d, t: run_bare(a, d, t, full=False),
    "bare_plain": lambda a, d, t: run_bare(a, d, t, full=False, plain=True),
    "bare_bf16": lambda a, d, t: run_bare(a, d, torch.bfloat16, full=False),
    "full": lambda a, d, t: run_bare(a, d, t, full=True),
}
NAMES = {"default": "sd-lora, default config", "nocache": "sd-lora, caches forced off",
         "bf16": "sd-lora, default + bf16", "bare": "bare floor (cached, fused AdamW)",
         "bare_plain": "bare, torch defaults", "bare_bf16": "bare floor, bf16 autocast",
         "full": "full fine-tune (bare)", "peer": "peer: diffusers example script"}


def worker(args) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.mixed_precision]
    if args.worker == "peer":
        print(json.dumps(run_peer(args)))
        return
    times = WORKERS[args.worker](args, device, dtype)
    print(json.dumps({"sec_per_step": statistics.median(times), "peak_gb": peak_memory_gb(device),
                      "steps": len(times), "times": times, "fwd_flops": FWD_FLOPS}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    p.add_argument("--resolution", type=int, default=512 if cuda else 256)
    p.add_argument("--mixed-precision", default="bf16" if cuda else "no", choices=["no", "bf16", "fp16"])
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--mfu-peak-file", type=Path, help="a file whose text contains 'NNN TFLOP/s' (the measured "
                   "matmul peak, as scripts/gpu_benchmark.sh writes it): print MFU (3x forward FLOPs per step)")
    p.add_argument("--steps", type=int, default=4, help="timed LoRA steps (after one warm-up step)")
    p.add_argument("--full-steps", type=int, default=2, help="timed full fine-tune steps (slow on CPU)")
    p.add_argument("--only", choices=[*WORKERS, "peer"], action="append")
    p.add_argument("--peer-script", type=Path, help="path of diffusers' examples/text_to_image/"
                   "train_text_to_image_lora.py (adds the peer column and the whole-job comparison)")
    p.add_argument("--peer-steps", type=int, default=50, help="peer runs this many and twice this many steps; "
                   "the whole-job comparison runs both tools for twice this many")
    p.add_argument("--repeats", type=int, default=1,
                   help="run each column this many times, alternating the order (a, b, b, a, ...) so slow drift of "
                        "a shared machine hits every column alike; the table shows the median over all timed steps")
    p.add_argument("--worker", choices=[*WORKERS, "peer"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    modes = args.only or ["default", "nocache", "bare", "bare_plain"]
    if args.peer_script and "peer" not in modes:
        modes.append("peer")
    if "peer" in modes and not (args.peer_script and args.peer_script.is_file()):
        sys.exit("the peer column needs --peer-script PATH to diffusers' train_text_to_image_lora.py")
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    loads = []
    for r in range(args.repeats):
        for mode in (modes if r % 2 == 0 else modes[::-1]):
            cmd = [sys.executable, __file__, "--worker", mode, "--resolution", str(args.resolution),
                   "--mixed-precision", args.mixed_precision, "--rank", str(args.rank), "--steps", str(args.steps),
                   "--full-steps", str(args.full_steps), "--peer-steps", str(args.peer_steps),
                   "--batch-size", str(args.batch_size)]
            if mode == "peer":
                cmd += ["--peer-script", str(args.peer_script)]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if out.returncode:
                sys.exit(f"{mode} failed:\n{out.stderr[-3000:]}")
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
            loads.append(os.getloadavg()[0])
    results = {m: {"sec_per_step": statistics.median(t for run in rs for t in run["times"]),
                   "peak_gb": max(run["peak_gb"] for run in rs),
                   "run_medians": [run["sec_per_step"] for run in rs]} for m, rs in runs.items()}
    device = torch.cuda.get_device_name() if cuda else f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"
    print(f"SD1 full-size UNet, random weights, {args.resolution} px, batch {args.batch_size}, LoRA rank {args.rank}, "
          f"mixed precision {args.mixed_precision}, torch {torch.__version__}, {device}; "
          f"load avg during the runs {min(loads):.1f}-{max(loads):.1f}")
    print(f"| {'what':34} | {'s/step':>8} | {'peak GB':>8} |\n|{'-' * 36}|{'-' * 10}|{'-' * 10}|")
    for mode, r in results.items():
        print(f"| {NAMES[mode]:34} | {r['sec_per_step']:8.2f} | {r['peak_gb']:8.2f} |")
    if args.repeats > 1:
        for mode, r in results.items():
            print(f"{NAMES[mode]}: per-run medians " + ", ".join(f"{t:.2f}" for t in r["run_medians"]))

    def ratio(a, b, what="sec_per_step"):
        return results[a][what] / results[b][what]

    if {"default", "bare"} <= results.keys():
        print(f"default / bare floor, time: {ratio('default', 'bare'):.3f} (target <= 1.03)")
    if {"default", "bare_plain"} <= results.keys():
        print(f"default / bare with torch defaults, time: {ratio('default', 'bare_plain'):.3f}")
    if {"nocache", "default"} <= results.keys():
        print(f"default speed-up over caches off: {ratio('nocache', 'default'):.2f}x")
    if {"bf16", "default"} <= results.keys():
        print(f"bf16 speed-up over fp32 (default config): {ratio('default', 'bf16'):.2f}x")
    if {"peer", "default"} <= results.keys():
        print(f"default vs peer: {ratio('peer', 'default'):.2f}x the steps/s (target >= 1.4), peak RSS "
              f"{ratio('default', 'peer', 'peak_gb'):.2f}x (target <= 0.8)")
        ours = whole_job(args)
        theirs = runs["peer"][0]["whole_job_s"]
        n = 2 * args.peer_steps
        print(f"whole job, {n} steps from a cold start: sd-lora {ours[n]:.0f} s, peer {theirs[str(n)]:.0f} s: "
              f"{theirs[str(n)] / ours[n]:.2f}x sooner (target >= 1.3)")
    flops = max((run.get("fwd_flops") or 0) for rs in runs.values() for run in rs)
    if args.mfu_peak_file and flops:
        import re

        peak = float(re.search(r"([0-9.]+) TFLOP/s", args.mfu_peak_file.read_text()).group(1)) * 1e12
        for mode, r in results.items():
            if mode != "peer":
                print(f"MFU {NAMES[mode]}: {3 * flops / r['sec_per_step'] / peak:.1%} "
                      f"(3 x {flops / 1e12:.2f} TFLOP forward per step, peak {peak / 1e12:.0f} TFLOP/s)")
    if {"default", "full"} <= results.keys():
        print(f"full / default time: {ratio('full', 'default'):.1f}x; memory: {ratio('default', 'full', 'peak_gb'):.2f}")


if __name__ == "__main__":
    main()
