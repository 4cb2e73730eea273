#!/usr/bin/env bash
# Regenerate the studio screenshots in docs/ (docs/studio_*.png, shown in the README) by running the studio's
# browser test in Debian's headless chromium: a real server on builtin:tiny, a caption edit, a run, generation.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
SD_LORA_SCREENSHOTS="$PWD/docs" "$PY" -m pytest -q -p no:cacheprovider tests/studio/test_browser.py
ls -l docs/studio_*.png
