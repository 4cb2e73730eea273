"""Benchmark the LoRA tools on full-size shapes with random weights (the issue-13 targets).

    nice -n 10 .venv/bin/python scripts/benchmark_tools.py [--work DIR] [--only resize,merge,extract,bake]

Cases (inputs are made first, in their own process, and not timed):
- resize: an SDXL rank-128 `full`-preset LoRA (UNet + both text encoders, fp16) to `--dynamic sv_fro 0.9`;
  target <= 60 s, peak RSS <= 2 GB;
- merge: two SDXL rank-64 `full`-preset LoRAs, `--method svd --rank 64`; target <= 90 s;
- extract: rank 32, UNet + text encoder, from two full-size SD1 diffusers folders (fp16; tuned = base + noise);
  target <= 5 min, peak RSS <= 2.5x one model's size (its weights as stored);
- bake: one SDXL rank-64 LoRA into a full-size SDXL single file (fp16, original layout); peak RSS <= 1.3x the
  checkpoint.
Each measured case runs in a fresh process; peak RSS is that process's ru_maxrss (os.wait4).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

GB = 1024 ** 3


def _full_size(family):
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from sd_lora.models.families import unet_architectures as architectures

    with torch.device("meta"):
        tes = [(CLIPTextModelWithProjection if family == "sdxl" and i == 1 else CLIPTextModel)(CLIPTextConfig(**c))
               for i, c in enumerate(architectures.text_encoder_configs(family))]
        unet = UNet2DConditionModel(**architectures.unet_config(family))
        vae = AutoencoderKL(**architectures.vae_config(family))
    return unet, vae, tes


def make_lora(path: Path, family: str, rank: int, seed: int) -> None:
    """A random `full`-preset LoRA (UNet incl. 3x3 convs + text encoders), fp16, written by sd-lora's writer."""
    import torch

    from sd_lora.models.families import unet_architectures as architectures
    from sd_lora.tools.extract import target_modules
    from sd_lora.tools.output import write_adapter

    unet, _, tes = _full_size(family)
    comps = {"unet": unet, "text_encoder": tes[0], **({"text_encoder_2": tes[1]} if family == "sdxl" else {})}
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for component, model in comps.items():
        for name, layer in target_modules(model, component, conv=True):
            shape = tuple(layer.weight.shape)
            down = torch.randn(rank, *shape[1:], generator=g, dtype=torch.float32) / math.sqrt(math.prod(shape[1:]))
            up = torch.randn(shape[0], rank, *([1, 1] if len(shape) == 4 else []), generator=g) * 0.01
            key = name if component == "unet" or name.startswith("text_model.") else "text_model." + name
            weights.setdefault(component, {})[key] = {"lora_A": down.half(), "lora_B": up.half(),
                                                      "alpha": torch.tensor(rank / 2.0)}
    write_adapter(path, weights, family, architectures.unet_config(family), save_precision="fp16")


def make_sd1_models(base: Path, tuned: Path) -> None:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from sd_lora.models.families import unet_architectures as architectures
    from sd_lora.models.clip_vocab import write_clip_tokenizer

    torch.manual_seed(0)
    tok_dir = Path(tempfile.mkdtemp()) / "tokenizer"
    write_clip_tokenizer(tok_dir, "<|endoftext|>")
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**architectures.vae_config("sd1")),
        text_encoder=CLIPTextModel(CLIPTextConfig(**architectures.text_encoder_configs("sd1")[0])),
        tokenizer=CLIPTokenizer.from_pretrained(str(tok_dir)),
        unet=UNet2DConditionModel(**architectures.unet_config("sd1")),
        scheduler=DDIMScheduler(**architectures.scheduler_config("sd1")), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.to(torch.float16)
    pipe.save_pretrained(str(base))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for model in (pipe.unet, pipe.text_encoder):
            for p in model.parameters():
                p.add_((torch.randn(p.shape, generator=g) * 1e-2).half())
    pipe.save_pretrained(str(tuned))


def make_sdxl_checkpoint(path: Path) -> None:
    """A full-size SDXL original-layout single file (fp16, random), written tensor by tensor."""
    import torch

    from sd_lora.models.families.unet_original_layout import pipeline_to_original

    unet, vae, tes = _full_size("sdxl")
    from types import SimpleNamespace

    shapes = {k: tuple(v.shape) for k, v in pipeline_to_original(
        SimpleNamespace(unet=unet, vae=vae, text_encoder=tes[0], text_encoder_2=tes[1]), "sdxl").items()}
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for k in sorted(shapes):
        n = math.prod(shapes[k]) * 2
        header[k] = {"dtype": "F16", "shape": list(shapes[k]), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    g = torch.Generator().manual_seed(2)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for k in sorted(shapes):
            t = (torch.randn(shapes[k], generator=g) * 0.02).half()
            f.write(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def prepare(case: str, work: Path) -> None:
    if case == "resize" and not (work / "xl_r128.safetensors").exists():
        make_lora(work / "xl_r128.safetensors", "sdxl", 128, 0)
    if case in ("merge", "bake"):
        for i in (1, 2):
            if not (work / f"xl_r64_{i}.safetensors").exists():
                make_lora(work / f"xl_r64_{i}.safetensors", "sdxl", 64, i)
    if case == "extract" and not (work / "sd1_tuned").exists():
        make_sd1_models(work / "sd1_base", work / "sd1_tuned")
    if case == "bake" and not (work / "xl.safetensors").exists():
        make_sdxl_checkpoint(work / "xl.safetensors")


def run_case(case: str, work: Path) -> dict:
    from sd_lora.tools import bake_adapters, extract_adapter, merge_adapters, resize_adapter

    start = time.monotonic()
    if case == "resize":
        r = resize_adapter(work / "xl_r128.safetensors", work / "out_resize.safetensors", dynamic="sv_fro", param=0.9)
        note = (f"{len(r.rows)} modules, ranks {min(x.new_rank for x in r.rows)}-{max(x.new_rank for x in r.rows)}, "
                f"mean retained {100 * r.mean_retained:.1f}%, {r.size_before / GB:.2f} -> {r.size_after / GB:.2f} GiB")
    elif case == "merge":
        r = merge_adapters([work / "xl_r64_1.safetensors", work / "xl_r64_2.safetensors"],
                           work / "out_merge.safetensors", method="svd", rank=64)
        note = f"{r.modules} modules"
    elif case == "extract":
        r = extract_adapter(str(work / "sd1_base"), str(work / "sd1_tuned"), work / "out_extract.safetensors", rank=32)
        note = f"extracted {r.extracted}, skipped {r.skipped}"
    else:
        r = bake_adapters(str(work / "xl.safetensors"), [f"{work / 'xl_r64_1.safetensors'}:0.8"],
                          work / "out_bake.safetensors")
        note = f"{r.adapters[0][2]} modules, route {r.route}"
    return {"seconds": time.monotonic() - start, "note": note}


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(case: str, work: Path) -> dict:
    out = work / f"result_{case}.json"
    proc = subprocess.Popen([sys.executable, __file__, "--child", case, "--work", str(work), "--result", str(out)])
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        return {"case": case, "error": f"exit status {status}"}
    result = json.loads(out.read_text())
    result.update(case=case, peak_rss=usage.ru_maxrss * 1024, cpu=usage.ru_utime + usage.ru_stime,
                  load=os.getloadavg()[0])
    return result


TARGETS = {
    "resize": lambda r, w: (r["seconds"] <= 60 and r["peak_rss"] <= 2 * GB, "<= 60 s, <= 2 GiB"),
    "merge": lambda r, w: (r["seconds"] <= 90, "<= 90 s"),
    "extract": lambda r, w: (r["seconds"] <= 300 and r["peak_rss"] <= 2.5 * _size(w / "sd1_base"),
                             f"<= 300 s, <= 2.5 x {_size(w / 'sd1_base') / GB:.2f} GiB"),
    "bake": lambda r, w: (r["peak_rss"] <= 1.3 * _size(w / "xl.safetensors"),
                          f"<= 1.3 x {_size(w / 'xl.safetensors') / GB:.2f} GiB"),
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", help="folder for the inputs and outputs (default: a temporary one, removed after)")
    ap.add_argument("--only", default="resize,merge,extract,bake")
    ap.add_argument("--child")
    ap.add_argument("--prepare")
    ap.add_argument("--result")
    args = ap.parse_args()
    if args.prepare:
        prepare(args.prepare, Path(args.work))
        return 0
    if args.child:
        Path(args.result).write_text(json.dumps(run_case(args.child, Path(args.work))))
        return 0
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="sd_lora_bench_tools_"))
    work.mkdir(parents=True, exist_ok=True)
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; work dir {work}")
    rows = []
    try:
        for case in args.only.split(","):
            t = time.monotonic()
            subprocess.run([sys.executable, __file__, "--prepare", case, "--work", str(work)], check=True)
            print(f"prepared {case} inputs in {time.monotonic() - t:.0f} s", flush=True)
            r = measure(case, work)
            if "error" in r:
                rows.append(f"| {case} | - | - | - | - | failed: {r['error']} | - | - |")
            else:
                met, target = TARGETS[case](r, work)
                rows.append(f"| {case} | {r['seconds']:.1f} s | {r['cpu']:.1f} s | {r['peak_rss'] / GB:.2f} GiB | "
                            f"{target} | {'yes' if met else 'NO'} | {r['load']:.1f} | {r['note']} |")
            print(rows[-1], flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print("\n| case | wall time | CPU time | peak RSS | target | met | load avg (1 min) | notes |\n"
          "|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
