"""Training-step benchmark on the full-size SD1 architecture with random weights (no download).

Columns (seconds per optimiser step, median over timed steps after one warm-up step, and peak RSS):
  default   `sd-lora train` with its default config (caches 'auto': latents and text outputs cached, encoders
            freed, fused AdamW, CPU allocator tuning) - the real recipe, data loader and all;
  nocache   the same with data.cache_latents = false and data.cache_text_encoder_outputs = false;
  bf16      the default config with train.mixed_precision = 'bf16';
  checkpointing  the default config with train.gradient_checkpointing = true (memory for time);
  bare      the floor: a minimal loop on the same cached tensors (one latent and one text embedding computed
            before the loop, VAE and text encoder then dropped), UNet LoRA forward + backward + the same fused
            AdamW, same allocator setting; nothing else;
  bare_plain the same bare loop with torch's default AdamW (per-tensor loop) and glibc's default allocator;
  full      a full fine-tune step of the same UNet (bare loop);
  peer      diffusers' examples/text_to_image/train_text_to_image_lora.py, given with --peer-script (not shipped
            in the diffusers wheel; fetch it yourself);
  kohya, kohya_cache  kohya sd-scripts' train_network.py without / with --cache_latents (--kohya-dir: a checkout,
            --kohya-python: the Python of its own venv, its diffusers pin differs from ours), SDPA, UNet-only LoRA
            on the same 128 attention projections (a 6-line network module narrows kohya's default set), AdamW;
  cli       `sd-lora train --config ...` as a user runs it, default config, model loaded from the saved folder.
The peers and cli run on the same random model saved to disk (--model-dir) and the same 4 images, for
--peer-steps and twice that many steps: s/step from the difference (load and cache time cancel out), the
peak RSS of the process, and the whole-job time of the longer run (load, cache, train, save) for item 7.
Each column runs in its own process so peak memory is its own; --repeats alternates the column order.
On CUDA it runs bf16 at 512 px by default.

    nice .venv/bin/python scripts/benchmark_train.py --only default --only nocache --only bare --repeats 2
    nice .venv/bin/python scripts/benchmark_train.py --only cli --peer-steps 50 --model-dir /tmp/sd1-random \
        --peer-script PATH/train_text_to_image_lora.py --kohya-dir PATH/sd-scripts --kohya-python PATH/venv/bin/python
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
TOKENIZER_WORDS = ["a", "photo", "of", "cat"]


def scratch() -> Path:
    """A temporary folder removed when this process exits (a saved full-size model is 4 GB)."""
    import atexit
    import shutil

    path = Path(tempfile.mkdtemp(prefix="sd_lora_bench_"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def build_random_sd1(dtype):
    """Full-size SD1 UNet, CLIP-L text encoder and VAE with random weights, plus an offline tokenizer."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from sd_lora.models.families.unet_architectures import scheduler_config, text_encoder_configs, unet_config, vae_config
    from sd_lora.models.tiny import write_tokenizer_files

    torch.manual_seed(0)
    tok_dir = str(scratch())
    tokenizer = CLIPTokenizer.from_pretrained(str(write_tokenizer_files(tok_dir, TOKENIZER_WORDS)))
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

    held = [build_random_sd1(torch.float32)]  # handed over once: then only the recipe holds the pipeline
    recipe_mod.load_pipeline = lambda *a, **k: (held.pop(), BaseModelInfo("random-sd1", "", "sd1", "epsilon", True))
    data_dir = scratch() / "imgs"
    write_images(data_dir, max(4, args.batch_size), args.resolution)
    sections = {
        "data": {"dir": str(data_dir), "resolution": args.resolution},
        "network": {"rank": args.rank, "alpha": args.rank},
        "train": {"max_steps": args.steps + 1, "batch_size": args.batch_size, "learning_rate": 1e-4,
                  "mixed_precision": args.mixed_precision, "log_every_n_steps": 1000},
        "output": {"dir": str(scratch()), "log_with": "none", "save_state_at_end": False},
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


def peer_model_dir(args) -> Path:
    """The random full-size model saved as a diffusers folder for the peers (kept in --model-dir when given)."""
    model_dir = args.model_dir or scratch() / "model"
    if not (model_dir / "model_index.json").is_file():
        build_random_sd1(torch.float32).save_pretrained(model_dir)
    return model_dir


def timed_lengths(args, make_cmd, env=None) -> dict:
    """Run a peer for --peer-steps and twice that many steps: s/step from the difference (load and cache time
    cancel), the whole-job wall time of each run, and the peak RSS of its processes."""
    import resource as res

    walls = {}
    for steps in (args.peer_steps, 2 * args.peer_steps):
        start = time.perf_counter()
        out = subprocess.run(make_cmd(steps), capture_output=True, text=True,
                             env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
        if out.returncode:
            sys.exit(f"peer failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
        walls[steps] = time.perf_counter() - start
    per_step = (walls[2 * args.peer_steps] - walls[args.peer_steps]) / args.peer_steps
    return {"sec_per_step": per_step, "times": [per_step], "whole_job_s": {str(k): v for k, v in walls.items()},
            "peak_gb": res.getrusage(res.RUSAGE_CHILDREN).ru_maxrss / 2**20}


def run_peer(args) -> dict:
    """diffusers' example LoRA script on the same random model and images; two lengths give s/step."""
    work = scratch()
    model_dir, data_dir = peer_model_dir(args), work / "data"
    write_images(data_dir, 4, args.resolution)
    with open(data_dir / "metadata.jsonl", "w") as f:
        for i in range(4):
            f.write(json.dumps({"file_name": f"{i}.png", "text": "a photo of a cat"}) + "\n")
    return timed_lengths(args, lambda steps: [
        sys.executable, str(args.peer_script), "--pretrained_model_name_or_path", str(model_dir),
        "--train_data_dir", str(data_dir), "--caption_column", "text", "--resolution", str(args.resolution),
        "--train_batch_size", str(args.batch_size), "--max_train_steps", str(steps), "--rank", str(args.rank),
        "--learning_rate", "1e-4", "--lr_scheduler", "constant", "--seed", "0", "--center_crop",
        "--dataloader_num_workers", "0", "--mixed_precision", args.mixed_precision,
        "--output_dir", str(work / f"out{steps}"), "--checkpointing_steps", "1000000"])


# kohya's LoRA covers every Linear of the transformer blocks; this network module keeps only the attention
# projections the other columns train (to_q/to_k/to_v/to_out.0), so all columns train the same module set.
KOHYA_SAME_MODULES = '''
import re
from networks import lora

def create_network(*args, **kwargs):
    network = lora.create_network(*args, **kwargs)
    network.unet_loras = [m for m in network.unet_loras if re.search(r"attn[12]_to_(q|k|v|out_0)$", m.lora_name)]
    return network
'''


def run_kohya(args, cache_latents: bool) -> dict:
    """kohya sd-scripts' train_network.py (its own venv, --kohya-python) on the same model and images, SDPA
    attention, UNet-only LoRA on the same modules, AdamW, with or without its latent cache."""
    work = scratch()
    model_dir, data_dir = peer_model_dir(args), work / "data"
    write_images(data_dir / "1_cat", 4, args.resolution)  # kohya's folder naming: <repeats>_<name>
    from sd_lora.models.tiny import write_tokenizer_files

    tok_cache = work / "tokenizers"  # kohya reads its tokenizer from here offline: the model's own, as vocab files
    write_tokenizer_files(tok_cache / "openai_clip-vit-large-patch14", TOKENIZER_WORDS)
    (work / "bench_kohya_lora.py").write_text(KOHYA_SAME_MODULES)
    return timed_lengths(args, lambda steps: [
        str(args.kohya_python), str(args.kohya_dir / "train_network.py"),
        "--pretrained_model_name_or_path", str(model_dir), "--train_data_dir", str(data_dir),
        "--caption_extension", ".txt", "--resolution", str(args.resolution), "--train_batch_size", str(args.batch_size),
        "--max_train_steps", str(steps), "--network_module", "bench_kohya_lora", "--network_dim", str(args.rank),
        "--network_alpha", str(args.rank), "--network_train_unet_only", "--learning_rate", "1e-4",
        "--optimizer_type", "AdamW", "--lr_scheduler", "constant", "--seed", "0",
        "--mixed_precision", args.mixed_precision,
        "--sdpa", "--max_data_loader_n_workers", "0", "--tokenizer_cache_dir", str(tok_cache),
        "--output_dir", str(work / f"out{steps}"), "--output_name", "bench", "--save_model_as", "safetensors",
        *(["--cache_latents"] if cache_latents else [])],
        env={"PYTHONPATH": f"{work}{os.pathsep}{args.kohya_dir}"})


def run_cli(args) -> dict:
    """`sd-lora train` as a user runs it: the model loaded from the same saved folder, default config (caches
    'auto'), same images, the adapter saved; two lengths give s/step and the whole-job time."""
    work = scratch()
    model_dir, data_dir = peer_model_dir(args), work / "data"
    write_images(data_dir, 4, args.resolution)

    def cmd(steps):
        config = work / f"train{steps}.toml"
        config.write_text(f"""[model]\npretrained = "{model_dir}"\n[data]\ndir = "{data_dir}"\nresolution = {args.resolution}
[network]\nrank = {args.rank}\nalpha = {args.rank}\n[train]\nmax_steps = {steps}\nbatch_size = {args.batch_size}
learning_rate = 1e-4\nmixed_precision = "{args.mixed_precision}"\n[output]\ndir = "{work / f'out{steps}'}"\nlog_with = "none"\n""")
        return [sys.executable, "-m", "sd_lora.cli.main", "train", "--config", str(config)]

    return timed_lengths(args, cmd)


FWD_FLOPS = 0  # UNet forward FLOPs of one step, counted by the bare workers (torch.utils.flop_counter)
WORKERS = {
    "default": lambda a, d, t: run_recipe(a, d, t),
    "nocache": lambda a, d, t: run_recipe(a, d, t, {"data": {"cache_latents": False,
                                                             "cache_text_encoder_outputs": False}}),
    "bf16": lambda a, d, t: run_recipe(a, d, torch.bfloat16, {"train": {"mixed_precision": "bf16"}}),
    "checkpointing": lambda a, d, t: run_recipe(a, d, t, {"train": {"gradient_checkpointing": True}}),
    "bare": lambda a, d, t: run_bare(a, d, t, full=False),
    "bare_plain": lambda a, d, t: run_bare(a, d, t, full=False, plain=True),
    "bare_bf16": lambda a, d, t: run_bare(a, d, torch.bfloat16, full=False),
    "full": lambda a, d, t: run_bare(a, d, t, full=True),
}
PEERS = {"cli": run_cli, "peer": run_peer, "kohya": lambda a: run_kohya(a, cache_latents=False),
         "kohya_cache": lambda a: run_kohya(a, cache_latents=True)}
NAMES = {"default": "sd-lora, default config", "nocache": "sd-lora, caches forced off",
         "bf16": "sd-lora, default + bf16", "checkpointing": "sd-lora, default + grad checkpointing",
         "bare": "bare floor (cached, fused AdamW)",
         "bare_plain": "bare, torch defaults", "bare_bf16": "bare floor, bf16 autocast",
         "full": "full fine-tune (bare)", "cli": "sd-lora train CLI, default config",
         "peer": "peer: diffusers example script", "kohya": "peer: kohya train_network.py",
         "kohya_cache": "peer: kohya + --cache_latents"}


def worker(args) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.mixed_precision]
    if args.worker in PEERS:
        print(json.dumps(PEERS[args.worker](args)))
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
    p.add_argument("--only", choices=[*WORKERS, *PEERS], action="append")
    p.add_argument("--peer-script", type=Path, help="path of diffusers' examples/text_to_image/"
                   "train_text_to_image_lora.py (adds the peer column and the whole-job comparison)")
    p.add_argument("--kohya-dir", type=Path, help="a kohya-ss/sd-scripts checkout (adds the kohya columns)")
    p.add_argument("--kohya-python", type=Path, help="the Python of kohya's own environment (its pinned diffusers)")
    p.add_argument("--model-dir", type=Path, help="where the random model is saved for the peers and the CLI column "
                   "(made once if missing; default: a new temporary folder per column)")
    p.add_argument("--peer-steps", type=int, default=50, help="peer runs this many and twice this many steps; "
                   "the whole-job comparison runs both tools for twice this many")
    p.add_argument("--repeats", type=int, default=1,
                   help="run each column this many times, alternating the order (a, b, b, a, ...) so slow drift of "
                        "a shared machine hits every column alike; the table shows the median over all timed steps")
    p.add_argument("--worker", choices=[*WORKERS, *PEERS], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    modes = args.only or ["default", "nocache", "bare", "bare_plain"]
    if args.peer_script and "peer" not in modes:
        modes += ["peer", "cli"]
    if args.kohya_dir and "kohya_cache" not in modes:
        modes += ["kohya", "kohya_cache", "cli"]
    modes = list(dict.fromkeys(modes))
    if "peer" in modes and not (args.peer_script and args.peer_script.is_file()):
        sys.exit("the peer column needs --peer-script PATH to diffusers' train_text_to_image_lora.py")
    if {"kohya", "kohya_cache"} & set(modes) and not (args.kohya_dir and (args.kohya_dir / "train_network.py").is_file()
                                                     and args.kohya_python):
        sys.exit("the kohya columns need --kohya-dir (an sd-scripts checkout) and --kohya-python (its venv's python)")
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    loads = []
    for r in range(args.repeats):
        for mode in (modes if r % 2 == 0 else modes[::-1]):
            cmd = [sys.executable, __file__, "--worker", mode, "--resolution", str(args.resolution),
                   "--mixed-precision", args.mixed_precision, "--rank", str(args.rank), "--steps", str(args.steps),
                   "--full-steps", str(args.full_steps), "--peer-steps", str(args.peer_steps),
                   "--batch-size", str(args.batch_size)]
            for flag in ("peer_script", "kohya_dir", "kohya_python", "model_dir"):
                if getattr(args, flag):
                    cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
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
    ours_col = "cli" if "cli" in results else "default"  # the peers are compared with the user's command
    if {"peer", ours_col} <= results.keys():
        print(f"{ours_col} vs diffusers example: {ratio('peer', ours_col):.2f}x the steps/s (target >= 1.4), peak RSS "
              f"{ratio(ours_col, 'peer', 'peak_gb'):.2f}x (target <= 0.8)")
    if {"kohya_cache", ours_col} <= results.keys():
        print(f"{ours_col} vs kohya with its latent cache: {ratio('kohya_cache', ours_col):.2f}x the steps/s "
              f"(target >= 1.2), peak RSS {ratio(ours_col, 'kohya_cache', 'peak_gb'):.2f}x")
    if {"kohya", ours_col} <= results.keys():
        print(f"{ours_col} vs kohya without cache: {ratio('kohya', ours_col):.2f}x the steps/s")
    n = str(2 * args.peer_steps)
    if "cli" in results:
        ours = statistics.median(run["whole_job_s"][n] for run in runs["cli"])
        print(f"sd-lora CLI s/step (from runs of {args.peer_steps} and {n} steps): {results['cli']['sec_per_step']:.2f}")
        for peer in ("peer", "kohya", "kohya_cache"):
            if peer in results:
                theirs = statistics.median(run["whole_job_s"][n] for run in runs[peer])
                print(f"whole job, {n} steps from a cold start (load, cache, train, save): sd-lora {ours:.0f} s, "
                      f"{NAMES[peer].removeprefix('peer: ')} {theirs:.0f} s: {theirs / ours:.2f}x sooner"
                      + (" (target >= 1.3)" if peer == "peer" else ""))
    flops = max((run.get("fwd_flops") or 0) for rs in runs.values() for run in rs)
    if args.mfu_peak_file and flops:
        import re

        peak = float(re.search(r"([0-9.]+) TFLOP/s", args.mfu_peak_file.read_text()).group(1)) * 1e12
        for mode, r in results.items():
            if mode not in PEERS:
                print(f"MFU {NAMES[mode]}: {3 * flops / r['sec_per_step'] / peak:.1%} "
                      f"(3 x {flops / 1e12:.2f} TFLOP forward per step, peak {peak / 1e12:.0f} TFLOP/s)")
    if {"default", "full"} <= results.keys():
        print(f"full / default time: {ratio('full', 'default'):.1f}x; memory: {ratio('default', 'full', 'peak_gb'):.2f}")


if __name__ == "__main__":
    main()
