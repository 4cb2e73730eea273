"""Generation latency with adapters: base, fused, unfused with 1 and 3 adapters (no download needed).

Models: the tiny SD1 pipeline (sd_lora.models.tiny) and the full-size SD1 architecture (860 M UNet, CLIP-L,
VAE) with random weights, built on the meta device and materialised with `to_empty` + each module's own
initialisation. Adapters are random rank-R LoRAs on to_q/k/v/out.0, written as diffusers files and loaded
through `AdapterSet` — the same path as `sd-lora generate`.

Rows, per model: latency of one image (`generate_images`, batch 1, CFG on) as the median of `--repeats`
runs, the UNet's share of it (seconds per UNet call), and the ratio to the base model. "base" is the model
with no adapter layers at all (measured before the adapters are loaded and again after they are unloaded);
"fused" has one adapter merged into the weights; "unfused" keeps the adapters as separate peft layers.
Repeats of the adapter rows are interleaved so drift from other load on the machine hits every row alike.

    .venv/bin/python scripts/benchmark_generate.py                       # CPU: fp32, full-size at 256 px, 2 steps
    .venv/bin/python scripts/benchmark_generate.py --device cuda --dtype fp16 --full-size 512 --steps 20
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
for _var in ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY"):
    os.environ.setdefault(_var, "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _materialise(model: torch.nn.Module) -> torch.nn.Module:
    """A model built on `meta` gets real (uninitialised) storage, then every module's default init."""
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return model


def build_full_sd1():
    """Full-size SD1 pipeline with random weights (UNet, CLIP-L text encoder, VAE) and an offline tokenizer."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from sd_lora.models.architectures import scheduler_config, text_encoder_configs, unet_config, vae_config
    from sd_lora.models.tiny import write_tokenizer_files

    torch.manual_seed(0)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config("sd1"))
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_encoder_configs("sd1")[0]))
        vae = AutoencoderKL(**vae_config("sd1"))
    tokenizer = CLIPTokenizer.from_pretrained(str(write_tokenizer_files(tempfile.mkdtemp(), ["a", "photo", "of", "cat"])))
    return StableDiffusionPipeline(
        vae=_materialise(vae), text_encoder=_materialise(text_encoder), tokenizer=tokenizer, unet=_materialise(unet),
        scheduler=EulerDiscreteScheduler(**scheduler_config("sd1")), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)


def build_tiny_sd1():
    from sd_lora.models.tiny import build_tiny_pipeline

    return build_tiny_pipeline("sd1", seed=0)


def write_random_loras(pipe, folder: Path, count: int, rank: int) -> list[Path]:
    """`count` diffusers LoRA files with random A and B (peft's init would leave B at zero: no effect)."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    files = []
    for i in range(count):
        torch.manual_seed(100 + i)
        name = f"bench{i}"
        pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS, init_lora_weights=False),
                              adapter_name=name)
        state = {k: v.detach().float().clone() * 0.1 for k, v in get_peft_model_state_dict(pipe.unet, adapter_name=name).items()}
        pipe.unet.delete_adapters(name)
        StableDiffusionPipeline.save_lora_weights(str(folder), unet_lora_layers=state, weight_name=f"{name}.safetensors")
        files.append(folder / f"{name}.safetensors")
    return files


class UnetClock:
    """Wall time spent inside the UNet's forward (hooks on the UNet module)."""

    def __init__(self, unet):
        self.total, self.calls, self._start = 0.0, 0, 0.0
        unet.register_forward_pre_hook(self._pre)
        unet.register_forward_hook(self._post)

    def _pre(self, module, args):
        self._start = time.perf_counter()

    def _post(self, module, args, output):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.total += time.perf_counter() - self._start
        self.calls += 1

    def reset(self):
        self.total, self.calls = 0.0, 0


def timed(pipe, clock: UnetClock, request, adapters) -> tuple[float, float]:
    from sd_lora.inference import generate_images

    clock.reset()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    generate_images(pipe, [request], adapters=adapters, progress=False)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, clock.total / max(1, clock.calls)


def bench_model(label: str, pipe, args, device, dtype, size: int) -> list[tuple]:
    """Rows (model, setting, image seconds, UNet seconds per call) for one pipeline."""
    from sd_lora.inference import AdapterSet, GenerationRequest

    files = write_random_loras(pipe, Path(tempfile.mkdtemp()), 3, args.rank)
    pipe = pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    clock = UnetClock(pipe.unet)

    def request(loras=()):
        return GenerationRequest("a photo of a cat", seed=1, steps=args.steps, guidance=5.0, width=size, height=size,
                                 loras=list(loras))

    timed(pipe, clock, request(), None)  # warm-up (allocator, kernels, scheduler tables)
    base = [timed(pipe, clock, request(), None) for _ in range(args.repeats)]
    adapters = AdapterSet(pipe, family="sd1")
    adapters.load([str(f) for f in files])
    one, three = [(str(files[0]), 1.0)], [(str(f), 1.0) for f in files]
    settings = {"fused (1 adapter)": [], "unfused, 1 adapter": [], "unfused, 3 adapters": []}
    timed(pipe, clock, request(three), adapters)  # warm-up with adapter layers
    for _ in range(args.repeats):
        adapters.fuse([(files[0], 1.0)])
        settings["fused (1 adapter)"].append(timed(pipe, clock, request(), adapters))
        adapters.unfuse()
        settings["unfused, 1 adapter"].append(timed(pipe, clock, request(one), adapters))
        settings["unfused, 3 adapters"].append(timed(pipe, clock, request(three), adapters))
    pipe.unload_lora_weights()
    base += [timed(pipe, clock, request(), None) for _ in range(args.repeats)]
    rows = [(label, "base (no adapter layers)", *_medians(base))]
    rows += [(label, name, *_medians(runs)) for name, runs in settings.items()]
    return rows


def _medians(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def print_table(rows, header: str) -> None:
    print(header)
    print("| model | setting | image latency (s) | UNet call (ms) | vs base |")
    print("|---|---|---:|---:|---:|")
    base = {}
    for model, setting, image_s, unet_s in rows:
        base.setdefault(model, image_s)
        print(f"| {model} | {setting} | {image_s:.3f} | {unet_s * 1000:.1f} | {image_s / base[model] - 1:+.1%} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--full-size", type=int, default=256, help="image side for the full-size SD1 model (px)")
    p.add_argument("--tiny-size", type=int, default=32, help="image side for the tiny model (px)")
    p.add_argument("--skip-full", action="store_true", help="only the tiny model")
    args = p.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)  # peft: "several adapters in one model" is intended
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    rows = bench_model("tiny sd1", build_tiny_sd1(), args, device, dtype, args.tiny_size)
    if not args.skip_full:
        rows += bench_model(f"full-size sd1 (random), {args.full_size} px", build_full_sd1(), args, device, dtype,
                            args.full_size)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} threads"
    print_table(rows, f"{where}; torch {torch.__version__}; {args.dtype}; {args.steps} steps, CFG 5, batch 1, "
                      f"LoRA rank {args.rank} on {'/'.join(TARGETS)}; median of {args.repeats}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
