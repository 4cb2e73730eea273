#!/usr/bin/env bash
# The main job: set up the environment if needed, train the demo adapter offline on the built-in tiny
# model, then render the before/after grid (LoRA scales 0, 0.5, 1; same prompts and seeds).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# --overwrite: running the demo again replaces its earlier run (see "Runs and output folders" in the README)
.venv/bin/sd-lora train --config train_configs/demo.toml --overwrite "$@"
.venv/bin/python scripts/demo_grid.py --lora output/demo/demo_style.safetensors --out output/demo/demo_grid.png
