"""Training-step benchmark on the full-size SD3.5 Medium architecture with random weights (no download):
`sd-lora train` with its default config against diffusers' examples/dreambooth/train_dreambooth_lora_sd3.py.

The model is saved once as a diffusers folder (--model-dir, made if missing): the SD3.5 Medium transformer from
its published config (sd_lora.models.tiny_transformers.FULL_SIZE_TRANSFORMERS), full-size CLIP-L and CLIP-G
text encoders, the full-size 16-channel VAE, and a T5 stand-in with T5-XXL's output width (4096) but one layer
(T5-XXL's 4.7 B parameters do not fit a 24 GiB machine next to the transformer). Both trainers encode the
prompt once before the loop and drop the text encoders, so the T5 stand-in does not change the step time.
Tokenizers are made in code (CLIP as scripts/benchmark_train.py makes it, T5 by write_t5_tokenizer_files).

Columns, each its own process run one after the other on the same model and the same --images random images (default 4), 512 px, batch 1,
LoRA rank 16 on the same 12 attention projections (sd-lora's default preset 'attn'; passed to the peer with
--lora_layers), the same T5 length for both (--t5-length: sd-lora's default 256 unless given; the peer's own
default is 77):
  cli   `sd-lora train --config ...` with the default config (caches 'auto');
  peer  diffusers' example script with its defaults otherwise (no --cache_latents: it runs the VAE each step),
        given with --peer-script (not in the diffusers wheel; fetch it yourself, keep it out of the repository).
Each process runs under a small wrapper (this file, --exec) that times the optimiser steps with torch's global
optimiser post-step hook (s/step = median gap between steps after the first, i.e. after one warm-up step),
records the peak RSS at the last step (load, cache and training) and at exit (save and, for the peer, its final
pipeline reload), and stops the process cleanly once its RSS passes --rss-limit-gb. The wrapper also lifts the
peer's check_min_version (it asks for a diffusers dev build; the installed release runs it unchanged).

    nice python scripts/benchmark_train_sd3.py --model-dir /tmp/sd35m-random --peer-script /tmp/train_dreambooth_lora_sd3.py
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
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
WORDS = ["a", "photo", "of", "cat"]
PROMPT = "a photo of a cat"


def build_model(model_dir: Path) -> None:
    """Save the random full-size SD3.5 Medium pipeline component by component (one in memory at a time)."""
    import diffusers
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer, T5Config, T5EncoderModel, \
        T5TokenizerFast

    from sd_lora.models.architectures import text_encoder_configs, vae_config
    from sd_lora.models.tiny import write_tokenizer_files
    from sd_lora.models.tiny_transformers import FULL_SIZE_TRANSFORMERS, SD3_SCHEDULER_CONFIG, SD3_VAE_FACTORS, \
        write_t5_tokenizer_files

    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="sd3_bench_tok_"))
    clip_tok = CLIPTokenizer.from_pretrained(str(write_tokenizer_files(tmp / "clip", WORDS)))
    t5_tok = T5TokenizerFast.from_pretrained(str(write_t5_tokenizer_files(tmp / "t5", WORDS)))
    clip_l, clip_g = text_encoder_configs("sdxl")
    scaling, shift = SD3_VAE_FACTORS
    vae = {**vae_config("sdxl"), "latent_channels": 16, "scaling_factor": scaling, "shift_factor": shift,
           "use_quant_conv": False, "use_post_quant_conv": False}
    t5 = T5Config(d_model=4096, d_kv=64, d_ff=10240, num_layers=1, num_heads=64, vocab_size=len(t5_tok),
                  feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    makers = {
        "transformer": lambda: SD3Transformer2DModel(**FULL_SIZE_TRANSFORMERS["sd3.5-medium"]),
        "text_encoder": lambda: CLIPTextModelWithProjection(CLIPTextConfig(**clip_l)),
        "text_encoder_2": lambda: CLIPTextModelWithProjection(CLIPTextConfig(**clip_g)),
        "text_encoder_3": lambda: T5EncoderModel(t5),
        "vae": lambda: AutoencoderKL(**vae),
        "scheduler": lambda: FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER_CONFIG),
        "tokenizer": lambda: clip_tok, "tokenizer_2": lambda: clip_tok, "tokenizer_3": lambda: t5_tok,
    }
    index = {"_class_name": "StableDiffusion3Pipeline", "_diffusers_version": diffusers.__version__}
    for name, make in makers.items():
        part = make()
        part.save_pretrained(str(model_dir / name))
        library = "diffusers" if type(part).__module__.startswith("diffusers") else "transformers"
        index[name] = [library, type(part).__name__]
        del part
    (model_dir / "model_index.json").write_text(json.dumps(index, indent=2))


def write_images(folder: Path, size: int, count: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for i in range(count):
        arr = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(folder / f"{i}.png")


def rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def import_torchvision_without_ops() -> None:
    """The only torchvision wheel on this machine is a CUDA build whose C++ ops cannot load next to CPU torch, and
    its import then fails registering fake kernels for them. The peer uses only torchvision.transforms (pure
    Python), so skip that registration module; nothing of the peer's own code changes."""
    import types

    try:
        import torchvision  # noqa: F401
    except ImportError:
        return
    except RuntimeError:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
        import torchvision  # noqa: F401, F811


def exec_wrapped(result_file: Path, limit_gb: float, target: list[str]) -> None:
    """Run `target` (a script path or `-m module`, then its arguments) in this process, timing optimiser steps."""
    import runpy

    stamps: list[float] = []
    peak_at_steps = [0.0]
    report = {"step_stamps": stamps}

    def on_step(optimizer, args, kwargs):
        stamps.append(time.perf_counter())
        peak_at_steps[0] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    def watch():
        while True:
            if rss_gb() > limit_gb:
                gaps = [b - a for a, b in zip(stamps, stamps[1:])]  # steps done before the limit still count
                report.update(aborted=f"stopped: RSS passed {limit_gb} GB", peak_gb=rss_gb(), times=gaps,
                              sec_per_step=statistics.median(gaps) if gaps else None,
                              peak_at_last_step_gb=peak_at_steps[0])
                result_file.write_text(json.dumps(report))
                os._exit(3)
            time.sleep(0.2)

    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(on_step)
    threading.Thread(target=watch, daemon=True).start()
    import_torchvision_without_ops()
    import diffusers.utils

    diffusers.utils.check_min_version = lambda *a, **k: None  # the peer asks for a dev build; the release runs it
    start = time.perf_counter()
    try:
        if target[0] == "-m":
            sys.argv = [target[1], *target[2:]]
            runpy.run_module(target[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = target
            runpy.run_path(target[0], run_name="__main__")
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    report.update(times=gaps, sec_per_step=statistics.median(gaps) if gaps else None,
                  peak_at_last_step_gb=peak_at_steps[0], wall_s=time.perf_counter() - start,
                  peak_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  peak_vram_gb=torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None)
    result_file.write_text(json.dumps(report))


def cli_command(args, work: Path, data_dir: Path) -> list[str]:
    config = work / "train.toml"
    config.write_text(f"""[model]\npretrained = "{args.model_dir}"\n[data]\ndir = "{data_dir}"
resolution = {args.resolution}\nt5_max_length = {args.t5_length}\n[network]\nrank = {args.rank}\nalpha = {args.rank}\n[train]\nmax_steps = {args.steps}
batch_size = 1\nlearning_rate = 1e-4\nmixed_precision = "{args.mixed_precision}"\n[output]\ndir = "{work / 'out'}"
log_with = "none"\n""")
    return ["-m", "sd_lora.cli.main", "train", "--config", str(config)]


def peer_command(args, work: Path, data_dir: Path) -> list[str]:
    from sd_lora.models.families.sd3 import SD3_PRESETS

    return [str(args.peer_script), "--pretrained_model_name_or_path", str(args.model_dir),
            "--instance_data_dir", str(data_dir), "--instance_prompt", PROMPT, "--resolution", str(args.resolution),
            "--train_batch_size", "1", "--max_train_steps", str(args.steps), "--rank", str(args.rank),
            "--lora_layers", ",".join(SD3_PRESETS["attn"]), "--max_sequence_length", str(args.t5_length),
            "--learning_rate", "1e-4", "--lr_scheduler", "constant", "--seed", "0", "--center_crop",
            "--dataloader_num_workers", "0", "--mixed_precision", args.mixed_precision,
            "--output_dir", str(work / "out"), "--checkpointing_steps", "1000000"]


def run_column(args, name: str) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"sd3_bench_{name}_"))
    data_dir = work / "data"
    write_images(data_dir, args.resolution, args.images)
    if name == "cli":
        for i in range(args.images):
            (data_dir / f"{i}.txt").write_text(PROMPT)
    target = (cli_command if name == "cli" else peer_command)(args, work, data_dir)
    result = work / "result.json"
    cmd = [sys.executable, __file__, "--exec", str(result), "--rss-limit-gb", str(args.rss_limit_gb), "--", *target]
    path = [str(REPO), *([str(args.peer_pythonpath)] if name == "peer" and args.peer_pythonpath else [])]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(path)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    (Path(args.log_dir) / f"{name}.log").write_text(out.stdout + out.stderr)
    if not result.is_file():
        return {"failed": f"exit {out.returncode}: {out.stderr[-1500:]}"}
    report = json.loads(result.read_text())
    if out.returncode and "aborted" not in report:
        report["failed"] = f"exit {out.returncode}: {out.stderr[-1500:]}"
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, required=False, help="the random model's folder (made once if missing)")
    p.add_argument("--peer-script", type=Path, help="diffusers' examples/dreambooth/train_dreambooth_lora_sd3.py")
    p.add_argument("--peer-pythonpath", type=Path, help="a folder with the peer's extra needs (torchvision), put "
                   "on the peer's PYTHONPATH only")
    p.add_argument("--only", choices=["cli", "peer"], action="append")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--t5-length", type=int, default=256, help="T5 tokens per prompt, both trainers (joins the "
                   "image tokens in every attention: 256 is sd-lora's and diffusers' pipeline default)")
    p.add_argument("--mixed-precision", default="no", choices=["no", "bf16"])
    p.add_argument("--steps", type=int, default=4, help="optimiser steps per run; the first is the warm-up")
    p.add_argument("--images", type=int, default=4, help="training images (at most --steps, so that sd-lora's "
                   "auto latent cache turns on as it does for any run longer than one epoch)")
    p.add_argument("--rss-limit-gb", type=float, default=18.0, help="stop a column whose RSS passes this")
    p.add_argument("--log-dir", default=tempfile.gettempdir(), help="each column's output goes to NAME.log here")
    p.add_argument("--build-only", action="store_true", help="save the random model and stop")
    p.add_argument("--exec", type=Path, help=argparse.SUPPRESS)
    args, rest = p.parse_known_args()
    if args.exec:
        return exec_wrapped(args.exec, args.rss_limit_gb, [a for a in rest if a != "--"] if rest[:1] == ["--"]
                            else rest)
    if not args.model_dir:
        sys.exit("--model-dir is required")
    if not (args.model_dir / "model_index.json").is_file():
        build_model(args.model_dir)
    if args.build_only:
        return
    columns = args.only or ["cli", "peer"]
    if "peer" in columns and not (args.peer_script and args.peer_script.is_file()):
        sys.exit("the peer column needs --peer-script PATH to diffusers' train_dreambooth_lora_sd3.py")
    results = {}
    for name in columns:
        results[name] = run_column(args, name)
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    device = f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"
    print(f"\nSD3.5 Medium full-size transformer, random weights, {args.resolution} px, batch 1, LoRA rank {args.rank}, "
          f"T5 length {args.t5_length}, mixed precision {args.mixed_precision}, {args.steps - 1} timed steps after 1 warm-up, torch "
          f"{torch.__version__}, {device}, load avg {os.getloadavg()[0]:.1f}")
    print("| what | s/step | peak RSS to last step, GB | peak RSS of process, GB |\n|---|---|---|---|")
    names = {"cli": "sd-lora train, default config", "peer": "diffusers train_dreambooth_lora_sd3.py"}
    for name, r in results.items():
        if "failed" in r or not r.get("sec_per_step"):
            print(f"| {names[name]} | {r.get('aborted') or 'failed'} | | {r.get('peak_gb', 0):.2f} |")
        elif "aborted" in r:
            print(f"| {names[name]} | {r['sec_per_step']:.1f} | {r['peak_at_last_step_gb']:.2f} | "
                  f"> {r['peak_gb']:.2f} ({r['aborted']}) |")
        else:
            print(f"| {names[name]} | {r['sec_per_step']:.1f} | {r['peak_at_last_step_gb']:.2f} | {r['peak_gb']:.2f} |"
                  + (f" peak VRAM {r['peak_vram_gb']:.2f} GiB" if r.get("peak_vram_gb") else ""))
    ok = [n for n in ("cli", "peer") if n in results and results[n].get("sec_per_step")]
    if ok == ["cli", "peer"]:
        c, q = results["cli"], results["peer"]
        print(f"sd-lora vs peer: {q['sec_per_step'] / c['sec_per_step']:.2f}x the steps/s (target >= 1), peak RSS "
              f"{c['peak_gb'] / q['peak_gb']:.2f}x (target <= 0.85)")


if __name__ == "__main__":
    main()
