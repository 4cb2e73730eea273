"""Train sd-lora's built-in tiny text-to-image base model (`builtin:tiny`) from scratch.

    python scripts/make_tiny_base.py --out sd_lora/builtin/tiny --work .tiny_base_work --threads 1

The corpus is drawn procedurally (sd_lora.models.shapes: coloured shapes with captions), then
two phases train the same component classes as Stable Diffusion 1.x, only small:
  1. AutoencoderKL (3 blocks: 32 px image -> 8x8x4 latent) on random-colour drawings;
  2. CLIPTextModel (tokenizer built from the corpus words) + UNet2DConditionModel with
     cross-attention, DDPM epsilon objective on the SD1 scaled-linear schedule, 10 % empty captions
     so classifier-free guidance works, EMA weights shipped.
Deterministic given --seed (each step's images, noise and timesteps derive from seed and step),
so an interrupted run continued with --resume reproduces the same weights. Checkpoints
(safetensors) go to --work every --ckpt-every steps. Uses CUDA when available.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sd_lora.models.families.unet_architectures import scheduler_config  # noqa: E402
from sd_lora.models.shapes import (  # noqa: E402
    PALETTE, SHAPES, autoencoder_sample, corpus_sample, corpus_words, dominant_shape_colour,
)
from sd_lora.models.tiny import write_tokenizer_files  # noqa: E402

TE_WIDTH = 64


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="sd_lora/builtin/tiny", help="diffusers directory to write")
    p.add_argument("--work", default=".tiny_base_work", help="checkpoints, logs and sample grid")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=32, help="image size in pixels")
    p.add_argument("--vae-steps", type=int, default=800)
    p.add_argument("--vae-batch", type=int, default=16)
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--steps", type=int, default=2400, help="UNet + text encoder steps")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --work")
    p.add_argument("--sample-steps", type=int, default=20, help="DDIM steps of the final sample grid (0: no grid)")
    return p.parse_args(argv)


# ---------------------------------------------------------------- models

def build_models(tokenizer_dir: Path, size: int):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(write_tokenizer_files(tokenizer_dir, corpus_words())))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 64),
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1, norm_num_groups=1, sample_size=size, scaling_factor=1.0,
    )
    with torch.no_grad():
        # Start the posterior nearly deterministic (std ~0.05): with log-variance 0 the sampling
        # noise drowns the small initial means and the decoder learns colours far more slowly.
        vae.quant_conv.bias[4:] = -6.0
    te = CLIPTextModel(CLIPTextConfig(
        hidden_size=TE_WIDTH, intermediate_size=TE_WIDTH * 4, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=len(tokenizer), max_position_embeddings=77, projection_dim=TE_WIDTH, hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    unet = UNet2DConditionModel(
        sample_size=size // 4, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TE_WIDTH, attention_head_dim=8, norm_num_groups=8,
    )
    return tokenizer, vae, te, unet


# ---------------------------------------------------------------- data

def to_tensor(images) -> torch.Tensor:
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def vae_batch(seed, step, batch, size):
    return to_tensor([autoencoder_sample(seed, step * batch + j, size) for j in range(batch)])


def corpus_batch(seed, step, batch, size):
    items = [corpus_sample(seed, step * batch + j, size) for j in range(batch)]
    rng = np.random.default_rng([seed, step, 7])
    captions = ["" if rng.random() < 0.1 else c for _, c in items]
    return to_tensor([im for im, _ in items]), captions


def step_generator(seed, step, phase, device):
    return torch.Generator(device="cpu").manual_seed((seed * 1_000_003 + step) * 4 + phase)


# ---------------------------------------------------------------- checkpoints (safetensors only)

def _flatten_optim(prefix, opt):
    sd = opt.state_dict()
    tensors = {f"{prefix}.{i}.{k}": v for i, st in sd["state"].items() for k, v in st.items()}
    return tensors, sd["param_groups"]


def _restore_optim(prefix, opt, tensors, groups):
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith(prefix + "."):
            _, i, k = key.split(".", 2)
            state.setdefault(int(i), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(work: Path, meta: dict, modules: dict, optims: dict):
    from safetensors.torch import save_file

    from sd_lora.fileio import atomic_path, atomic_write_text

    tensors, groups = {}, {}
    for name, mod in modules.items():
        tensors.update({f"{name}.{k}": v.detach().cpu().contiguous() for k, v in mod.state_dict().items()})
    for name, opt in optims.items():
        flat, groups[name] = _flatten_optim(name, opt)
        tensors.update({k: v.cpu().contiguous() for k, v in flat.items()})
    with atomic_path(work / "checkpoint.safetensors") as tmp:
        save_file(tensors, str(tmp))
    atomic_write_text(work / "checkpoint.json", json.dumps({**meta, "param_groups": groups}))


def load_checkpoint(work: Path, modules: dict, optims: dict, device) -> dict:
    from safetensors.torch import load_file

    meta = json.loads((work / "checkpoint.json").read_text())
    tensors = load_file(str(work / "checkpoint.safetensors"), device=str(device))
    for name, mod in modules.items():
        sub = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
        if sub:
            mod.load_state_dict(sub)
    for name, opt in optims.items():
        if name in meta["param_groups"]:
            _restore_optim(name, opt, tensors, meta["param_groups"][name])
    return meta


# ---------------------------------------------------------------- training phases

def train_vae(args, vae, opt, device, work, log, start=0):
    vae.train()
    t0 = time.time()
    for step in range(start, args.vae_steps):
        for g in opt.param_groups:
            g["lr"] = args.vae_lr * min(1.0, (step + 1) / 50)
        x = vae_batch(args.seed, step, args.vae_batch, args.size).to(device)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=step_generator(args.seed, step, 1, device)).to(device)
        rec = vae.decode(z).sample
        kl = post.kl().mean() / z[0].numel()
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % args.log_every == 0:
            log(f"vae step {step + 1}/{args.vae_steps} loss {loss.item():.4f} kl {kl.item():.3f} "
                f"{(time.time() - t0) / (step + 1 - start):.2f}s/step")
        if (step + 1) % args.ckpt_every == 0 or step + 1 == args.vae_steps:
            save_checkpoint(work, {"phase": "vae", "step": step + 1}, {"vae": vae}, {"opt_vae": opt})
    vae.eval().requires_grad_(False)


@torch.no_grad()
def latent_scale(args, vae, device) -> float:
    x = vae_batch(args.seed + 1, 0, 128, args.size).to(device)
    return float(1.0 / vae.encode(x).latent_dist.mean.std())


def encode_text(tokenizer, te, captions, device):
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids.to(device)
    return te(ids)[0]


def min_snr_weights(alphas_cumprod, t, gamma=5.0):
    snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
    return torch.clamp(snr, max=gamma) / snr


def train_unet(args, models, opt, device, work, log, start=0):
    from diffusers import DDPMScheduler

    tokenizer, vae, te, unet, ema = models
    params = [p for g in opt.param_groups for p in g["params"]]
    sched = DDPMScheduler.from_config(scheduler_config("sd1"))
    acp = sched.alphas_cumprod.to(device)
    scale = vae.config.scaling_factor
    unet.train(), te.train()
    t0 = time.time()
    for step in range(start, args.steps):
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, (step + 1) / 100)
        x, captions = corpus_batch(args.seed, step, args.batch, args.size)
        gen = step_generator(args.seed, step, 2, device)
        with torch.no_grad():
            post = vae.encode(x.to(device)).latent_dist
            z = (post.mean + post.std * torch.randn(post.mean.shape, generator=gen).to(device)) * scale
        noise = torch.randn(z.shape, generator=gen).to(device)
        t = torch.randint(0, sched.config.num_train_timesteps, (z.shape[0],), generator=gen).to(device)
        pred = unet(sched.add_noise(z, noise, t), t, encode_text(tokenizer, te, captions, device)).sample
        per = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per * min_snr_weights(acp, t)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(step)
        if (step + 1) % args.log_every == 0:
            eta = (time.time() - t0) / (step + 1 - start) * (args.steps - step - 1)
            log(f"unet step {step + 1}/{args.steps} loss {loss.item():.4f} "
                f"{(time.time() - t0) / (step + 1 - start):.2f}s/step eta {eta / 60:.1f} min")
        if (step + 1) % args.ckpt_every == 0 or step + 1 == args.steps:
            save_checkpoint(work, {"phase": "unet", "step": step + 1, "scaling_factor": scale},
                            {"vae": vae, "te": te, "unet": unet, "ema": ema.shadow}, {"opt": opt})


class Ema:
    """Exponential moving average of the UNet and text encoder (what ships)."""

    def __init__(self, te, unet):
        import copy

        self.live = torch.nn.ModuleDict({"te": te, "unet": unet})
        self.shadow = copy.deepcopy(self.live).requires_grad_(False)

    @torch.no_grad()
    def update(self, step, decay=0.999):
        d = min(decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(list(self.shadow.parameters()), list(self.live.parameters()), 1 - d)


# ---------------------------------------------------------------- export and samples

def build_pipeline(tokenizer, vae, te, unet):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae, text_encoder=te, tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler(**scheduler_config("sd1")),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def sample_grid(pipe, path: Path, seed: int, steps: int, log) -> float:
    """One row per colour, one column per shape; returns the colour accuracy of the grid."""
    from PIL import Image

    colours = [c for c in PALETTE if c not in ("gray", "white")]
    prompts = [f"a large {c} {s}" for c in colours for s in SHAPES]
    images = pipe(prompts, num_inference_steps=steps, guidance_scale=5.0, output_type="pil",
                  generator=torch.Generator().manual_seed(seed)).images
    hits = sum(dominant_shape_colour(im) == p.split()[2] for im, p in zip(images, prompts))
    w = images[0].width
    grid = Image.new("RGB", (w * len(SHAPES), w * len(colours)))
    for i, im in enumerate(images):
        grid.paste(im, ((i % len(SHAPES)) * w, (i // len(SHAPES)) * w))
    grid.resize((grid.width * 4, grid.height * 4), Image.Resampling.NEAREST).save(path)
    log(f"sample grid (rows {', '.join(colours)}; columns {', '.join(SHAPES)}): {path}")
    log(f"colour accuracy on the grid: {hits}/{len(prompts)}")
    return hits / len(prompts)


def export(args, tokenizer, vae, ema, work, log):
    pipe = build_pipeline(tokenizer, vae, ema.shadow["te"], ema.shadow["unet"])
    pipe.set_progress_bar_config(disable=True)
    if args.sample_steps:
        sample_grid(pipe, work / "samples.png", args.seed, args.sample_steps, log)
    # float32 on disk (a few MB): loads with one dtype everywhere, which CPU training needs;
    # transformers would keep an fp16 text encoder in fp16 while diffusers upcasts the UNet.
    pipe.save_pretrained(args.out, safe_serialization=True)
    size = sum(f.stat().st_size for f in Path(args.out).rglob("*") if f.is_file())
    log(f"saved {args.out} ({size / 1e6:.2f} MB float32, {size / 2e6:.2f} MB as fp16)")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    logf = open(work / "log.txt", "a", encoding="utf-8")

    def log(msg):
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    torch.manual_seed(args.seed)
    tokenizer, vae, te, unet = build_models(work / "tokenizer", args.size)
    vae, te, unet = vae.to(device), te.to(device), unet.to(device)
    ema = Ema(te, unet)
    opt = torch.optim.AdamW(list(unet.parameters()) + list(te.parameters()), lr=args.lr, weight_decay=1e-2)
    opt_vae = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    meta = {"phase": "vae", "step": 0}
    if args.resume and (work / "checkpoint.json").is_file():
        meta = load_checkpoint(work, {"vae": vae, "te": te, "unet": unet, "ema": ema.shadow},
                               {"opt_vae": opt_vae, "opt": opt}, device)
        log(f"resumed: phase {meta['phase']} step {meta['step']}")
    log(f"device {device}, threads {torch.get_num_threads()}; params: vae {count(vae):.2f} M, "
        f"text encoder {count(te):.2f} M, unet {count(unet):.2f} M")
    started = time.time()
    if meta["phase"] == "vae":
        train_vae(args, vae, opt_vae, device, work, log, start=meta["step"])
        meta = {"phase": "unet", "step": 0, "scaling_factor": latent_scale(args, vae, device)}
        log(f"latent scaling factor {meta['scaling_factor']:.4f}")
    vae.eval().requires_grad_(False)
    vae.register_to_config(scaling_factor=meta["scaling_factor"])
    train_unet(args, (tokenizer, vae, te, unet, ema), opt, device, work, log, start=meta["step"])
    log(f"training wall time this invocation: {(time.time() - started) / 60:.1f} min")
    export(args, tokenizer, vae, ema, work, log)
    return 0


def count(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


if __name__ == "__main__":
    raise SystemExit(main())
