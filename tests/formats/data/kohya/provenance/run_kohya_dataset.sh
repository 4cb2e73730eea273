#!/bin/bash
# kohya train_network.py with a --dataset_config (reg images, buckets, batch 2) for one epoch: its metadata
# records how kohya counts that dataset (ss_num_batches_per_epoch, ss_num_train_images, ss_num_reg_images).
set -e
cd "$(dirname "$0")/data2"
PYTHONPATH=/work/peers/sd-scripts:/work/peers/fixture/shim HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=2 \
/work/peers/kohya-venv/bin/python /work/peers/sd-scripts/train_network.py \
  --pretrained_model_name_or_path ../model --dataset_config dataset.toml \
  --max_train_epochs 1 --network_module networks.lora --network_dim 1 --network_alpha 1 \
  --network_args "block_dims=0,0,0,0,0,0,0,0,0,0,0,0,1,0,0,0,0,0,0,0,0,0,0,0,0" --network_train_unet_only \
  --learning_rate 1e-4 --optimizer_type AdamW --seed 0 --mixed_precision no --save_precision fp16 --sdpa \
  --max_data_loader_n_workers 0 --tokenizer_cache_dir ../tokenizers \
  --output_dir out --output_name counted --save_model_as safetensors
