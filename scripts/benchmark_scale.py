"""Dataset scale: scan time and memory against the number of images, with the disk caches.

For each size N a synthetic 64 px dataset (scripts/make_synthetic_dataset.py) is made once, then a fresh
process scans it (timed), and trains `builtin:tiny` on it with latents and text-encoder outputs on the disk
cache (data.cache_memory_gb = 0: the memory cache's budget is zero, so both stream from disk), and reports its
RSS after the scan, after caching, after training, and its peak.

    nice .venv/bin/python scripts/benchmark_scale.py --sizes 200 2000 20000 --work /tmp/sd_lora_scale [--epoch]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(folder: Path, steps: int, out: Path) -> dict:
    from sd_lora.config.load import config_from_dict
    from sd_lora.data import scan_dataset
    from sd_lora.train.recipe import LoRARecipe

    cfg = config_from_dict({
        "model": {"pretrained": "builtin:tiny"},
        "data": {"dir": str(folder), "resolution": 32, "cache_latents": True, "cache_text_encoder_outputs": True,
                 "cache_memory_gb": 0.0},
        "network": {"rank": 4, "alpha": 4.0},
        "train": {"max_steps": steps, "batch_size": 8, "learning_rate": 1e-4, "log_every_n_steps": 1000},
        "output": {"dir": str(out), "name": "scale", "log_with": "none", "save_state_at_end": False},
    })
    base = rss_mb()
    start = time.perf_counter()
    scan = scan_dataset(cfg.data)
    scan_s = time.perf_counter() - start
    images = sum(len(s.records) for s in scan.subsets)
    after_scan = rss_mb()
    recipe = LoRARecipe(cfg)
    start = time.perf_counter()
    recipe.setup()
    setup_s = time.perf_counter() - start
    after_cache = rss_mb()
    start = time.perf_counter()
    recipe.train()
    train_s = time.perf_counter() - start
    after_train = rss_mb()
    recipe.cleanup()
    return {"images": images, "scan_s": scan_s, "setup_s": setup_s, "train_s": train_s, "rss_start_mb": base,
            "rss_after_scan_mb": after_scan, "rss_after_cache_mb": after_cache, "rss_after_train_mb": after_train,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[200, 2000, 20000])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--epoch", action="store_true", help="train one whole epoch at each size (N / 8 steps) instead "
                   "of --steps, so every image's cached latents and text outputs are read from disk once")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "sd_lora_scale")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, Path(tempfile.mkdtemp()))))
        return
    from scripts.make_synthetic_dataset import make_dataset

    rows = []
    for n in args.sizes:
        folder = args.work / f"n{n}"
        if not (folder / f"{n - 1:06d}.png").exists():
            make_dataset(folder, n)
        for cached in folder.glob(".sd_lora_cache"):  # every size encodes from scratch
            subprocess.run(["rm", "-rf", str(cached)], check=True)
        steps = -(-n // 8) if args.epoch else args.steps
        out = subprocess.run([sys.executable, __file__, "--worker", str(folder), "--steps", str(steps)],
                             capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if out.returncode:
            sys.exit(out.stderr[-3000:])
        rows.append({**json.loads(out.stdout.strip().splitlines()[-1]), "steps": steps})
    load = os.getloadavg()[0]
    length = "one epoch" if args.epoch else f"{args.steps} steps"
    print(f"builtin:tiny, 64 px images trained at 32 px, batch 8, {length}, disk caches (data.cache_memory_gb = 0); "
          f"load avg {load:.1f}, {os.cpu_count()} cores")
    print("| images | scan s | setup (load + cache) s | steps | train s | RSS after scan MB | after cache MB | "
          "after train MB | peak MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['images']} | {r['scan_s']:.2f} | {r['setup_s']:.1f} | {r['steps']} | {r['train_s']:.1f} | "
              f"{r['rss_after_scan_mb']:.0f} | {r['rss_after_cache_mb']:.0f} | {r['rss_after_train_mb']:.0f} | "
              f"{r['peak_rss_mb']:.0f} |")
    first, last = rows[0], rows[-1]
    print(f"RSS after training, {last['images']} vs {first['images']} images: "
          f"{last['rss_after_train_mb'] - first['rss_after_train_mb']:+.0f} MB (target within 300 MB); "
          f"scan of {last['images']}: {last['scan_s']:.1f} s (target <= 15 s)")


if __name__ == "__main__":
    main()
