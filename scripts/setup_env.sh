#!/usr/bin/env bash
# Create .venv (if missing) and install sd-lora with its test tools. Idempotent.
# torch is pinned first so pip takes the CPU wheel this machine has on disk instead of a multi-GB CUDA build;
# on a GPU machine install the torch build you want first, then run this.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install -q "torch==2.13.0"
fi
.venv/bin/pip install -q -e ".[dev]"
