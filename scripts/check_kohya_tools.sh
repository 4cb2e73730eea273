#!/bin/bash
# Run kohya sd-scripts' own LoRA tools on an sd-lora adapter file: networks/check_lora_weights.py (loads every
# tensor, prints its norms) and networks/resize_lora.py (reads ss_network_dim / ss_network_alpha / ss_network_args
# and writes a lower-rank file). Needs a kohya checkout and the Python of kohya's own environment.
#   bash scripts/check_kohya_tools.sh SD_SCRIPTS_DIR KOHYA_PYTHON ADAPTER.safetensors
set -euo pipefail
kohya_dir=$1 kohya_python=$2 adapter=$3
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cd "$kohya_dir"
"$kohya_python" networks/check_lora_weights.py "$adapter" > "$out/check.txt"
echo "check_lora_weights.py: $(grep -c lora_down "$out/check.txt") lora_down tensors read"
"$kohya_python" networks/resize_lora.py --model "$adapter" --save_to "$out/resized.safetensors" --new_rank 2 \
  --save_precision fp16 --device cpu > "$out/resize.txt" 2>&1
"$kohya_python" - "$out/resized.safetensors" <<'PY'
import sys
from safetensors import safe_open
meta = safe_open(sys.argv[1], "pt").metadata()
print(f"resize_lora.py: wrote rank {meta['ss_network_dim']}, alpha {meta['ss_network_alpha']}")
PY
