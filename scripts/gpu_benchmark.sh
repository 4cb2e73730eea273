#!/usr/bin/env bash
# GPU checks of issue 14, in one short run (~10 minutes on one recent GPU); prints a table per part.
#   1. SD1.5 architecture, 512 px, batch 4, bf16: s/step of sd-lora's default config and of the bare floor,
#      and MFU against a measured bf16 matmul peak (the model FLOPs of a LoRA step ~ 3x the forward's).
#   2. SDXL architecture, 1024 px, batch 1, gradient checkpointing + caches: peak VRAM (target <= 10 GB).
#   3. One tiny run each with attention = xformers, optimizer = adamw8bit, model.quantize = nf4, when the
#      package is installed (skipped with a line saying so otherwise).
#   4. The defaults of issue 24: what train.mixed_precision / gradient_checkpointing = "auto" pick on this GPU,
#      SD1.5 512 px batch 4 s/step and peak of the default, of forced fp32 and of fused_backward, each peak
#      against the memory estimate (sd_lora.train.memory_plan, the figures --dry-run prints).
#   5. SD3.5 Medium (full-size transformer, random weights), 1024 px, batch 1, bf16, rank 16: s/step and peak
#      VRAM of `sd-lora train` with its default config (scripts/benchmark_train_sd3.py, cli column).
# Random weights (no download). Usage:  bash scripts/gpu_benchmark.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-${OUT:-/tmp/sd_lora_gpu}}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

echo "== 0. device and bf16 matmul peak"
"$PY" - <<'EOF' | tee "$OUT/peak.txt"
import time, torch
assert torch.cuda.is_available(), "no CUDA device"
n = 8192
a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
for _ in range(3): a @ b
torch.cuda.synchronize(); t = time.perf_counter(); reps = 20
for _ in range(reps): a @ b
torch.cuda.synchronize(); s = (time.perf_counter() - t) / reps
print(f"{torch.cuda.get_device_name()}: bf16 matmul {2 * n**3 / s / 1e12:.0f} TFLOP/s (measured peak)")
EOF

echo "== 1. SD1.5 512 px batch 4 bf16: sd-lora default vs bare floor"
timeout 300 "$PY" scripts/benchmark_train.py --only default --only bare --resolution 512 --mixed-precision bf16 \
    --steps 10 --batch-size 4 --mfu-peak-file "$OUT/peak.txt" | tee "$OUT/sd15.txt"

echo "== 2. SDXL 1024 px batch 1, gradient checkpointing + caches: peak VRAM"
timeout 240 "$PY" - <<'EOF' | tee "$OUT/sdxl.txt"
import tempfile, torch
from pathlib import Path
from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
import sd_lora.train.recipe as recipe_mod
from sd_lora.config.load import config_from_dict
from sd_lora.models.families.unet_architectures import scheduler_config, text_encoder_configs, unet_config, vae_config
from sd_lora.models.load import BaseModelInfo
from sd_lora.models.tiny import write_tokenizer_files
import sys; sys.path.insert(0, "scripts")
from benchmark_train import write_images

tok = CLIPTokenizer.from_pretrained(str(write_tokenizer_files(tempfile.mkdtemp(), ["a", "photo", "of", "cat"])))
te1, te2 = text_encoder_configs("sdxl")
pipe = StableDiffusionXLPipeline(vae=AutoencoderKL(**vae_config("sdxl")), text_encoder=CLIPTextModel(CLIPTextConfig(**te1)),
    text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**te2)), tokenizer=tok, tokenizer_2=tok,
    unet=UNet2DConditionModel(**unet_config("sdxl")), scheduler=EulerDiscreteScheduler(**scheduler_config("sdxl")))
held = [pipe]; del pipe  # handed over once: then only the recipe holds it (it frees the encoders once cached)
recipe_mod.load_pipeline = lambda *a, **k: (held.pop(), BaseModelInfo("random-sdxl", "", "sdxl", "epsilon", True))
data = Path(tempfile.mkdtemp()) / "imgs"; write_images(data, 4, 1024)
cfg = config_from_dict({"data": {"dir": str(data), "resolution": 1024},
    "network": {"rank": 16, "alpha": 16}, "output": {"dir": tempfile.mkdtemp(), "log_with": "none"},
    "train": {"max_steps": 6, "batch_size": 1, "mixed_precision": "bf16", "gradient_checkpointing": True,
              "log_every_n_steps": 1000}})
recipe = recipe_mod.LoRARecipe(cfg)
recipe.setup(); torch.cuda.reset_peak_memory_stats(); recipe.train()
steps = [b - a for a, b in zip(recipe.step_times, recipe.step_times[1:])]
peak = torch.cuda.max_memory_allocated() / 2**30
print(f"SDXL 1024 px batch 1 bf16 + checkpointing + caches: {sorted(steps)[len(steps) // 2]:.2f} s/step, "
      f"peak VRAM {peak:.2f} GiB (target <= 10) {'met' if peak <= 10 else 'NOT met'}")
EOF

echo "== 3. xformers / adamw8bit / nf4, one tiny run each"
DATA="$OUT/tiny_data"
"$PY" scripts/make_synthetic_dataset.py "$DATA" --count 8 --size 64 >/dev/null
run_tiny() {  # name, python module it needs, extra --set options
  local name=$1 module=$2; shift 2
  if ! "$PY" -c "import $module" 2>/dev/null; then echo "$name: skipped ($module not installed)"; return; fi
  if timeout 120 "$PY" -m sd_lora train --set model.pretrained=builtin:tiny --set "data.dir=$DATA" \
       --set data.resolution=64 --set train.max_steps=5 --set train.mixed_precision=bf16 \
       --set "output.dir=$OUT/$name" --set output.log_with=none "$@" > "$OUT/$name.log" 2>&1; then
    echo "$name: ok ($(grep -c '' "$OUT/$name.log") log lines, adapter $(ls "$OUT/$name"/*.safetensors | head -1))"
  else
    echo "$name: FAILED (see $OUT/$name.log)"; tail -5 "$OUT/$name.log"
  fi
}
run_tiny xformers xformers --set train.attention=xformers
run_tiny adamw8bit bitsandbytes --set train.optimizer=adamw8bit
run_tiny nf4 bitsandbytes --set model.quantize=nf4
echo "== 4. issue 24 defaults: auto precision / checkpointing, fused backward, the memory estimate"
timeout 300 "$PY" - <<'EOF' | tee "$OUT/defaults.txt"
import sys, tempfile, torch
from pathlib import Path
sys.path.insert(0, "scripts")
import sd_lora.train.recipe as recipe_mod
from benchmark_train import build_random_sd1, write_images
from sd_lora.config.load import config_from_dict
from sd_lora.models.load import BaseModelInfo
from sd_lora.models.families.unet_architectures import text_encoder_configs, unet_config, vae_config
from sd_lora.train.memory_plan import estimate_run

data = Path(tempfile.mkdtemp()) / "imgs"; write_images(data, 8, 512)
configs = {"unet": unet_config("sd1"), "vae": vae_config("sd1"), "text_encoder": text_encoder_configs("sd1")[0]}
for name, train in [("default (auto)", {}), ("fp32", {"mixed_precision": "no"}),
                    ("auto + fused_backward", {"fused_backward": True, "max_grad_norm": 0.0})]:
    held = [build_random_sd1(torch.float32)]
    recipe_mod.load_pipeline = lambda *a, **k: (held.pop(), BaseModelInfo("random-sd1", "", "sd1", "epsilon", True))
    cfg = config_from_dict({"data": {"dir": str(data), "resolution": 512},
        "network": {"rank": 16, "alpha": 16, "unet_targets": ["to_q", "to_k", "to_v", "to_out.0"]},
        "output": {"dir": tempfile.mkdtemp(), "log_with": "none"},
        "train": {"max_steps": 8, "batch_size": 4, "log_every_n_steps": 1000, **train}})
    recipe = recipe_mod.LoRARecipe(cfg)
    recipe.setup(); torch.cuda.reset_peak_memory_stats(); recipe.train()
    steps = sorted(b - a for a, b in zip(recipe.step_times[2:], recipe.step_times[3:]))
    peak = torch.cuda.max_memory_allocated()
    e = estimate_run(recipe.cfg, configs, recipe.cfg.train.gradient_checkpointing, "cuda", (True, True))
    print(f"{name}: {recipe.cfg.train.mixed_precision}, checkpointing {recipe.cfg.train.gradient_checkpointing}: "
          f"{steps[len(steps) // 2]:.3f} s/step, peak {peak / 2**30:.2f} GiB (estimate {e.training / 2**30:.2f} GiB, "
          f"estimate / measured {e.training / peak:.2f})")
    recipe.cleanup(); del recipe; torch.cuda.empty_cache()
EOF

echo "== 5. SD3.5 Medium 1024 px batch 1 bf16: sd-lora train, default config"
timeout 600 "$PY" scripts/benchmark_train_sd3.py --only cli --model-dir "$OUT/sd35m-random" --resolution 1024 \
    --mixed-precision bf16 --steps 11 --images 4 --rss-limit-gb 100 --log-dir "$OUT" | tee "$OUT/sd35m.txt"
echo "results in $OUT"
