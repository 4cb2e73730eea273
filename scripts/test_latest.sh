#!/usr/bin/env bash
# The test suite on the newest releases on the registry (not the lock), in its own venv (.venv-latest).
# Upstream releases break us; this finds out before users do. Everything is upgraded, torch included: the venv
# starts from the lock's torch pin (or TORCH=...), then the eager upgrade takes the newest torch pip may install
# (on this machine pip's cap, 2.14.1, a CUDA build of ~5.5 GB that lies on disk; it runs on the CPU).
# Extra arguments go to pytest (e.g. a smoke subset: tests/train tests/formats).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-latest
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
"$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/pip" install -q "${TORCH:-$(grep -m1 '^torch==' requirements.lock)}"
"$VENV/bin/pip" install -q --upgrade --upgrade-strategy eager -e ".[dev]"
"$VENV/bin/python" - <<'PY'
from importlib.metadata import version
names = ["torch", "diffusers", "transformers", "peft", "accelerate", "safetensors", "pillow", "huggingface_hub",
         "tokenizers", "numpy", "pytest"]
print("newest releases under test: " + ", ".join(f"{n} {version(n)}" for n in names))
PY
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
