"""Check `sd-lora train --dry-run`'s memory estimate against the measured peak RSS of real runs on this CPU.

Each setting runs `sd-lora train` (3 steps, the default config otherwise: caches auto, encoders freed) in a
fresh process whose own peak RSS (ru_maxrss) is the measurement; the estimate is computed from the same config
by the functions `--dry-run` uses (sd_lora.train.memory_plan), with gradient checkpointing as the setting
says. Settings: builtin:tiny at 32 and 64 px, and the full-size SD1 architecture with random weights at 256 px
(built once and saved to --model-dir, 4 GB; see scripts/benchmark_train.py), fp32 and bf16, with and without
gradient checkpointing. Target: |estimate / measured - 1| <= 20 %.

    nice .venv/bin/python scripts/check_memory_estimate.py --model-dir /tmp/sd1-random
    nice .venv/bin/python scripts/check_memory_estimate.py --only tiny32 --only tiny64     # no full-size model
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
# name -> (model, resolution, batch, [train] keys)
SETTINGS = {
    "tiny32": ("tiny", 32, 2, {"mixed_precision": "no", "gradient_checkpointing": False}),
    "tiny64": ("tiny", 64, 8, {"mixed_precision": "no", "gradient_checkpointing": False}),
    "sd1_fp32": ("sd1", 256, 1, {"mixed_precision": "no", "gradient_checkpointing": False}),
    "sd1_fp32_ckpt": ("sd1", 256, 1, {"mixed_precision": "no", "gradient_checkpointing": True}),
    "sd1_bf16": ("sd1", 256, 1, {"mixed_precision": "bf16", "gradient_checkpointing": False}),
}
GiB = 2**30

_RUN = """
import resource, runpy, sys
sys.argv = ["sd-lora", "train", "--config", sys.argv[1], "--overwrite"]
try:
    runpy.run_module("sd_lora", run_name="__main__")
except SystemExit as e:
    if e.code:
        raise
print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def write_config(work: Path, name: str, model: str, resolution: int, batch: int, train: dict) -> Path:
    from benchmark_train import write_images

    data = work / f"data{resolution}"
    if not data.is_dir():
        write_images(data, 4, resolution)
    lines = [f'[model]\npretrained = "{model}"', f'[data]\ndir = "{data}"\nresolution = {resolution}',
             f"[network]\nrank = 16\nalpha = 16.0\nunet_targets = {json.dumps(TARGETS)}",
             f"[train]\nmax_steps = 3\nbatch_size = {batch}\nlog_every_n_steps = 100",
             f'[output]\ndir = "{work / ("out_" + name)}"\nlog_with = "none"']
    lines[3] += "".join(f"\n{k} = {json.dumps(v)}" for k, v in train.items())
    path = work / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def estimated(config: Path, checkpointing: bool):
    from sd_lora.config.load import load_config
    from sd_lora.data import scan_dataset
    from sd_lora.train.memory_plan import _encoders_freed, component_configs, estimate_run
    from sd_lora.train.plan import with_model_defaults
    from sd_lora.train.precision import with_resolved_precision

    cfg, _ = with_resolved_precision(with_model_defaults(load_config(config)))
    configs = component_configs(cfg.model.pretrained)
    return estimate_run(cfg, configs, checkpointing, "cpu", _encoders_freed(cfg, scan_dataset(cfg.data), "cpu"))


def measured(config: Path) -> int:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", _RUN, str(config)], env=env, capture_output=True, text=True,
                         timeout=1800)  # killed with this script's own limit, not left running
    if out.returncode:
        raise SystemExit(f"{config.name} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return int(out.stdout.rsplit("PEAK_RSS_KB", 1)[1].split()[0]) * 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", choices=sorted(SETTINGS), help="run only these settings")
    p.add_argument("--model-dir", type=Path, default=Path("/tmp/sd1-random"),
                   help="the random full-size SD1 model (built and saved here when missing, 4 GB)")
    p.add_argument("--work", type=Path, default=Path("/tmp/sd_lora_memcheck"))
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.only or SETTINGS:
        model, resolution, batch, train = SETTINGS[name]
        if model == "sd1":
            if not (args.model_dir / "model_index.json").is_file():
                import torch
                from benchmark_train import build_random_sd1

                build_random_sd1(torch.float32).save_pretrained(args.model_dir)
            model = str(args.model_dir)
        else:
            model = "builtin:tiny"
        config = write_config(args.work, name, model, resolution, batch, train)
        e = estimated(config, train["gradient_checkpointing"])
        peak = measured(config)
        rows.append((name, resolution, batch, train, e, peak))
        print(f"{name}: estimate {e.peak / GiB:.3f} GiB, measured {peak / GiB:.3f} GiB", flush=True)
    print("\n| setting | px | batch | precision | checkpointing | estimate GiB (phase) | measured peak RSS GiB | "
          "estimate / measured |\n|---|---|---|---|---|---|---|---|")
    for name, resolution, batch, train, e, peak in rows:
        phase = "train" if e.training >= e.loading else "load"
        print(f"| {name} | {resolution} | {batch} | {train['mixed_precision']} | {train['gradient_checkpointing']} | "
              f"{e.peak / GiB:.3f} ({phase}) | {peak / GiB:.3f} | {e.peak / peak:.2f} |")


if __name__ == "__main__":
    main()
