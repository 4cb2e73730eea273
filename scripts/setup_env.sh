#!/usr/bin/env bash
# Create .venv (if missing) and install sd-lora with its test tools from requirements.lock. Idempotent.
#   VENV=DIR            another venv folder (default .venv)
#   SD_LORA_NO_LOCK=1   install from pyproject's ranges instead of the lock (newest releases pip finds)
# torch is installed first, pinned, so pip takes the CPU wheel this machine has on disk instead of a multi-GB
# CUDA build; a torch already in the venv is kept (on a GPU machine install the build you want first).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
LOCK=requirements.lock
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip > "$VENV/install.log" 2>&1 || { cat "$VENV/install.log" >&2; exit 1; }
fi
has_torch=0
"$VENV/bin/python" -c "import torch" 2>/dev/null && has_torch=1
constraints=()
if [ "${SD_LORA_NO_LOCK:-0}" != 1 ]; then
  tmp=$(mktemp)
  trap 'rm -f "$tmp"' EXIT
  if [ "$has_torch" = 1 ]; then
    grep -v '^torch==' "$LOCK" > "$tmp"     # keep the installed torch build
  else
    cp "$LOCK" "$tmp"
  fi
  constraints=(-c "$tmp")
fi
if [ "$has_torch" = 0 ]; then
  torch_pin=$(grep -m1 '^torch==' "$LOCK" || echo "torch==2.13.0")
  "$VENV/bin/pip" install -q "$torch_pin" > "$VENV/install.log" 2>&1 || { cat "$VENV/install.log" >&2; exit 1; }
fi
# Skip pip when nothing it reads changed since the last install (keeps the demo's output short and quick).
stamp="$VENV/.sd_lora_install"
want="$(cat pyproject.toml "$LOCK" | sha256sum | cut -c1-16) lock=${SD_LORA_NO_LOCK:-0}"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # pip and the build backend are chatty even with -q: keep their output in a log, show it on failure.
  if ! "$VENV/bin/pip" install -q "${constraints[@]}" -e ".[dev]" > "$VENV/install.log" 2>&1; then
    cat "$VENV/install.log" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
