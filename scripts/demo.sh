#!/usr/bin/env bash
# The main job: set up the environment if needed, then train the demo adapter offline on the built-in model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/sd-lora train --config train_configs/demo.toml "$@"
