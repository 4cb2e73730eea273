#!/bin/bash
# kohya sd-scripts train_network.py, 2 optimiser steps on the random SD1 model (make_model.py), CPU, fp32.
set -e
cd "$(dirname "$0")"
BD="0,2,0,0,0,0,0,0,0,0,0,0,2,0,0,0,0,0,0,0,0,0,0,0,2"
PYTHONPATH=/work/peers/sd-scripts:/work/peers/fixture/shim HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=2 \
/work/peers/kohya-venv/bin/python /work/peers/sd-scripts/train_network.py \
  --pretrained_model_name_or_path model --train_data_dir data --caption_extension .txt \
  --resolution 64 --train_batch_size 1 --max_train_steps 2 \
  --network_module networks.lora --network_dim 2 --network_alpha 1 --network_args "block_dims=$BD" \
  --learning_rate 1e-4 --optimizer_type AdamW --lr_scheduler constant --seed 0 --mixed_precision no \
  --save_precision fp16 --sdpa --max_data_loader_n_workers 0 --tokenizer_cache_dir tokenizers \
  --output_dir out --output_name kohya_sd1_lora --save_model_as safetensors \
  --training_comment "sd-lora test fixture"
