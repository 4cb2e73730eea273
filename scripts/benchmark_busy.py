"""The demo training on an idle CPU and beside a competing process, for each thread / wait setting: a table.

    .venv/bin/python scripts/benchmark_busy.py                 # the whole demo (600 steps), 3 settings x 2 cases
    .venv/bin/python scripts/benchmark_busy.py --steps 100 --settings auto

Each run is `sd-lora train --config train_configs/demo.toml` in a subprocess into a scratch folder, timed from
start to exit (model load, training, save). "busy" starts the competitor first: another process that keeps the
cores busy the way a second training does (torch matmuls on every core, its own threads), or a pure-Python
spin loop per core (`--competitor spin`). The settings:

    auto         sd-lora's default: train.cpu_threads = 0 (1 thread for a small model)
    2-default    2 torch threads (torch's default on 2 cores: the old behaviour), the OpenMP library's wait policy
    2-passive    2 torch threads, OMP_WAIT_POLICY=PASSIVE (waiting threads sleep)
    2-active     2 torch threads, OMP_WAIT_POLICY=ACTIVE (waiting threads spin)

Run it on an otherwise quiet machine: other processes count as a competitor too.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"auto": ([], {}),
            "2-default": (["--set", "train.cpu_threads=2"], {}),
            "2-passive": (["--set", "train.cpu_threads=2"], {"OMP_WAIT_POLICY": "PASSIVE"}),
            "2-active": (["--set", "train.cpu_threads=2"], {"OMP_WAIT_POLICY": "ACTIVE"})}
COMPETITORS = {
    "torch": "import torch\na = torch.randn(384, 384)\nwhile True:\n    a = torch.tanh(a @ a)",
    "spin": "while True:\n    pass",
}


def _env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT), **extra)
    return env


def train_once(setting: str, steps: int, work: Path) -> float:
    args, env = SETTINGS[setting]
    cmd = [sys.executable, "-m", "sd_lora", "train", "--config", str(ROOT / "train_configs" / "demo.toml"),
           "--set", f"output.dir={work}", "--set", f"train.max_steps={steps}", "--overwrite", *args]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(env))
    took = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{setting}: training failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return took


def start_competitor(kind: str) -> list[subprocess.Popen]:
    """One competing process (torch: it uses every core itself) or one spin loop per core."""
    count = 1 if kind == "torch" else (os.cpu_count() or 1)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    procs = [subprocess.Popen([sys.executable, "-c", COMPETITORS[kind]], env=env) for _ in range(count)]
    time.sleep(3)  # let it reach its loop (and the load average notice it)
    return procs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=600, help="training steps per run (the demo: 600)")
    p.add_argument("--settings", default="auto,2-default,2-passive,2-active", help=f"comma list of {', '.join(SETTINGS)}")
    p.add_argument("--competitor", choices=sorted(COMPETITORS), default="torch")
    args = p.parse_args(argv)
    settings = [s.strip() for s in args.settings.split(",")]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        p.error(f"unknown setting(s) {unknown}; choose from {', '.join(SETTINGS)}")
    print(f"demo training, {args.steps} steps, {os.cpu_count()} CPUs, load average before: "
          f"{os.getloadavg()[0]:.2f}; competitor: {args.competitor}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="sd-lora-busy-") as tmp:
        for setting in settings:
            idle = train_once(setting, args.steps, Path(tmp) / setting)
            procs = start_competitor(args.competitor)
            try:
                busy = train_once(setting, args.steps, Path(tmp) / setting)
            finally:
                for proc in procs:
                    proc.kill()
                    proc.wait()
            rows.append((setting, idle, busy))
            print(f"  {setting}: idle {idle:.1f} s, busy {busy:.1f} s", flush=True)
    print(f"\n| setting | idle (s) | beside a {args.competitor} process (s) | busy / idle |")
    print("|---|---:|---:|---:|")
    for setting, idle, busy in rows:
        print(f"| {setting} | {idle:.1f} | {busy:.1f} | {busy / idle:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
