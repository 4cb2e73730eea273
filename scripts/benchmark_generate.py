"""Generation latency with adapters: base, fused, unfused with 1 and 3 LoRAs (sd_lora.inference).

Models: the tiny SD1 model, and the full-size SD1 architecture with random weights (no download). Each
row is the median of `--repeats` timed runs after one warm-up, one image (batch 1, CFG on, so the UNet
sees 2 samples). "image" is end to end (text encoding, denoising, VAE decode); "UNet" is the time spent
inside UNet forwards only, where adapters cost something. Rows are run interleaved, round by round, so
load changes on a shared machine hit every row alike; the fused row is compared with a base timed in
the same rounds.

    .venv/bin/python scripts/benchmark_generate.py                 # CPU, 1 thread
    .venv/bin/python scripts/benchmark_generate.py --models tiny --repeats 9
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def random_sd1():
    """Full-size SD1 UNet, CLIP-L and VAE, randomly initialised (real init, not uninitialised memory)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from sd_lora.models.families.unet_architectures import scheduler_config, text_encoder_configs, unet_config, vae_config
    from sd_lora.models.tiny import write_tokenizer_files

    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(str(write_tokenizer_files(tempfile.mkdtemp(), ["a", "photo", "cat"])))
    return StableDiffusionPipeline(
        vae=AutoencoderKL(**vae_config("sd1")), tokenizer=tokenizer,
        text_encoder=CLIPTextModel(CLIPTextConfig(**text_encoder_configs("sd1")[0])),
        unet=UNet2DConditionModel(**unet_config("sd1")), scheduler=DDIMScheduler(**scheduler_config("sd1")),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def tiny_sd1():
    from sd_lora.models.tiny import build_tiny_pipeline

    return build_tiny_pipeline("sd1", seed=0)


def write_loras(pipe, folder: Path, rank: int, n: int = 3) -> list[Path]:
    """`n` random LoRA files (attention q/k/v/out) for this pipeline's UNet."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    files = []
    for i in range(n):
        torch.manual_seed(100 + i)
        name = f"bench{i}"
        pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS, init_lora_weights=False),
                              adapter_name=name)
        state = {k: v.detach().clone() * (0.01 if "lora_B" in k else 1.0)
                 for k, v in get_peft_model_state_dict(pipe.unet, adapter_name=name).items()}
        pipe.unet.delete_adapters(name)
        StableDiffusionPipeline.save_lora_weights(str(folder), unet_lora_layers=state,
                                                  weight_name=f"{name}.safetensors")
        files.append(folder / f"{name}.safetensors")
    return files


class UnetTimer:
    """Sums wall time spent inside the UNet's forward."""

    def __init__(self, unet):
        self.total, self._start = 0.0, 0.0
        unet.register_forward_pre_hook(lambda *a: setattr(self, "_start", time.perf_counter()))
        unet.register_forward_hook(lambda *a: setattr(self, "total", self.total + time.perf_counter() - self._start))


def _timed_rounds(rows: dict, timers: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """Median (image s, UNet s) per row; rows interleaved round by round in rotating order, round 0 warms up."""
    from sd_lora.inference import generate_images

    times = {k: ([], []) for k in rows}
    with torch.no_grad():
        names = list(rows)
        for round_ in range(repeats + 1):
            # A different row goes first each round, so no row always follows the same one.
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                pipe, adapters, request = rows[name]
                timer = timers[id(pipe)]
                unet_before, start = timer.total, time.perf_counter()
                generate_images(pipe, [request], adapters=adapters, progress=False)
                if round_:
                    times[name][0].append(time.perf_counter() - start)
                    times[name][1].append(timer.total - unet_before)
    return {k: (statistics.median(a), statistics.median(b)) for k, (a, b) in times.items()}


def bench_model(label: str, build, size: int, steps: int, repeats: int, rank: int) -> list[tuple]:
    """Two pipelines sharing text encoder and VAE: a pristine base, and one that gets the adapters.
    Phase 1 times base against unfused settings; phase 2 fuses one LoRA and times base against it."""
    import copy

    from sd_lora.inference import AdapterSet, GenerationRequest

    base_pipe = build()
    lora_pipe = type(base_pipe)(**{**base_pipe.components, "unet": copy.deepcopy(base_pipe.unet)})
    for p in (base_pipe, lora_pipe):
        p.set_progress_bar_config(disable=True)
    files = write_loras(lora_pipe, Path(tempfile.mkdtemp()), rank)
    adapters = AdapterSet(lora_pipe, family="sd1")
    adapters.load([str(f) for f in files])
    timers = {id(p): UnetTimer(p.unet) for p in (base_pipe, lora_pipe)}

    def req(loras=()):
        return GenerationRequest("a photo of a cat", seed=1, steps=steps, guidance=7.0, width=size, height=size,
                                 loras=[(str(f), 0.8) for f in loras])

    base = "base (no adapters loaded)"
    phase1 = _timed_rounds({base: (base_pipe, None, req()),
                            "unfused, 3 loaded, none active": (lora_pipe, adapters, req()),
                            "unfused, 1 LoRA": (lora_pipe, adapters, req(files[:1])),
                            "unfused, 3 LoRAs": (lora_pipe, adapters, req(files))}, timers, repeats)
    adapters.fuse([(files[0], 0.8)])
    phase2 = _timed_rounds({base: (base_pipe, None, req()), "fused, 1 LoRA": (lora_pipe, adapters, req())},
                           timers, repeats)
    out = []
    for phase in (phase1, phase2):
        base_img, base_unet = phase[base]
        for name, (img, unet) in phase.items():
            if name == base and phase is phase2:
                name = "base (again, for the fused row)"
            out.append((label, name, img, 100 * (img / base_img - 1), unet, 100 * (unet / base_unet - 1)))
            print(f"{label:<28} {name:<32} {img:8.3f} s {out[-1][3]:+7.1f} %  UNet {unet:8.3f} s "
                  f"{out[-1][5]:+7.1f} %", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,sd1")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    setups = {"tiny": ("tiny SD1, 64 px", tiny_sd1, 64, 10, args.repeats),
              "sd1": ("SD1 full-size, 128 px", random_sd1, 128, 4, max(2, args.repeats // 2))}
    rows = []
    for key in args.models.split(","):
        label, build, size, steps, repeats = setups[key]
        print(f"# {label}: {steps} steps, median of {repeats}, LoRA rank {args.rank}", flush=True)
        rows += bench_model(f"{label}, {steps} steps", build, size, steps, repeats, args.rank)
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"{args.threads} thread(s), fp32, CPU\n")
    print("| model | setting | image (s) | vs base | UNet (s) | vs base |")
    print("|---|---|---:|---:|---:|---:|")
    for label, name, img, d_img, unet, d_unet in rows:
        print(f"| {label} | {name} | {img:.3f} | {d_img:+.1f} % | {unet:.3f} | {d_unet:+.1f} % |")


if __name__ == "__main__":
    main()
