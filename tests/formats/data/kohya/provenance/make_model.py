"""A random SD1 model for running kohya's train_network.py on a CPU: the full-size SD1 UNet (kohya converts
to its own fixed SD1 UNet, so the UNet cannot be smaller), a 1-layer CLIP text encoder of width 768 (the UNet's
cross-attention width), a tiny 4-channel VAE with 8x downsampling. Saved fp16 as a diffusers folder."""
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

sys.path.insert(0, "/work/wt/kohya")
from sd_lora.models.tiny import write_tokenizer_files

out = Path(sys.argv[1])
tok_dir = write_tokenizer_files(out.parent / "tokenizers" / "openai_clip-vit-large-patch14", ["a", "photo", "of", "cat", "dog"])
torch.manual_seed(0)
unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
tok = CLIPTokenizer.from_pretrained(tok_dir)
te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=768, intermediate_size=3072, num_hidden_layers=1,
                                  num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                                  projection_dim=768))
vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32, 32, 32),
                    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                    layers_per_block=1, norm_num_groups=32, sample_size=64)
sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                               safety_checker=None, feature_extractor=None, requires_safety_checker=False)
pipe.to(torch.float16).save_pretrained(out)
print("saved", out)
