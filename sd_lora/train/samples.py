"""Sample images during training: the [sample] prompts with fixed seeds, one labelled grid per save."""

from __future__ import annotations

import json
from pathlib import Path

import torch

__all__ = ["sample_guidance_rescale", "sample_records", "render_samples", "class_image_generator", "RECIPE_CHUNK"]

from sd_lora.inference.recipes import RECIPE_CHUNK  # PNG text chunk: the record `generate --recipe IMAGE.png` reads


def sample_guidance_rescale(cfg) -> float:
    """sample.guidance_rescale, default 0.7 with zero-terminal SNR (Lin et al.'s value), else 0."""
    if cfg.sample.guidance_rescale is not None:
        return cfg.sample.guidance_rescale
    return 0.7 if cfg.train.zero_terminal_snr else 0.0


def sample_records(cfg, step: int, adapter_file: str, *, family: str, dtype: torch.dtype, base_model: str,
                   base_model_location: str) -> list[dict]:
    """The full recipe of each configured sample of config `cfg` at `step`, as rendered with the weights of
    `adapter_file` (the adapter metadata's `sd_lora.samples`, and each sample PNG's record)."""
    from sd_lora.inference.hashes import base_model_hash
    from sd_lora.inference.schedulers import canonical_scheduler

    from sd_lora.inference.prompts import prompt_spec

    s, t = cfg.sample, cfg.train
    dtype = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32")
    specs = [prompt_spec(p, "sample.prompts") for p in s.prompts]  # kohya's --n/--w/--h/--d/--s/--l/--ss
    return [{"index": i, "prompt": p.prompt, "seed": s.seed + i if p.seed is None else p.seed,
             "negative_prompt": s.negative_prompt if p.negative_prompt is None else p.negative_prompt,
             "steps": p.steps or s.steps, "sampler": canonical_scheduler(p.scheduler or s.scheduler),
             "guidance": s.guidance_scale if p.guidance is None else p.guidance,
             "guidance_rescale": sample_guidance_rescale(cfg), "zero_terminal_snr": t.zero_terminal_snr,
             "width": p.width or s.width or cfg.data.resolution, "height": p.height or s.height or cfg.data.resolution,
             "clip_skip": t.clip_skip or 1, "scale": 1.0, "dtype": dtype, "family": family,
             "base_model": base_model, "base_model_location": base_model_location,
             "base_model_hash": base_model_hash(base_model_location), "adapter": adapter_file, "step": step}
            for i, p in enumerate(specs)]


def render_samples(pipeline, records: list[dict], step: int, out_dir: Path, adapter_file: str, *,
                   denoiser: str = "unet") -> Path:
    """Render every sample record (seed = sample.seed + index, identical at every save) with `pipeline` into one
    grid PNG, `out_dir/stepNNNNNN.png`, and each sample as `out_dir/step-NNNNNN/NN.png` with AUTOMATIC1111
    `parameters` naming the base model hash, the adapter file and step, plus its JSON record. `denoiser`: the
    pipeline attribute of the denoiser (put in eval mode meanwhile)."""
    from sd_lora.fileio import atomic_path
    from sd_lora.inference import GenerationRequest, format_parameters, generate_images, make_grid, save_png, \
        set_scheduler

    requests = [GenerationRequest(prompt=r["prompt"], negative_prompt=r["negative_prompt"], seed=r["seed"],
                                  steps=r["steps"], guidance=r["guidance"], width=r["width"], height=r["height"],
                                  clip_skip=r["clip_skip"], guidance_rescale=r["guidance_rescale"])
                for r in records]
    modules = [getattr(pipeline, denoiser), pipeline.text_encoder]
    was_training = [m.training for m in modules]
    modules[0].eval()
    images = [None] * len(requests)
    with torch.no_grad():
        for sampler in dict.fromkeys(r["sampler"] for r in records):  # a prompt may name its own (kohya --ss)
            which = [i for i, r in enumerate(records) if r["sampler"] == sampler]
            set_scheduler(pipeline, sampler, records[which[0]]["zero_terminal_snr"])
            for i, im in zip(which, generate_images(pipeline, [requests[i] for i in which], progress=False)):
                images[i] = im
    for module, mode in zip(modules, was_training):
        module.train(mode)
    folder = Path(out_dir) / f"step-{step:06d}"
    for im, record in zip(images, records):
        extra = {"Model hash": (record["base_model_hash"] or "")[:10], "Lora": adapter_file, "Lora step": str(step),
                 "Lora scale": "1"}
        save_png(folder / f"{record['index']:02d}.png", im.image, format_parameters(im, record["base_model"], extra),
                 extra_text={RECIPE_CHUNK: json.dumps(record, sort_keys=True)})
    grid = make_grid([im.image for im in images], labels=[f"{r.prompt} (seed {r.seed})" for r in requests])
    path = Path(out_dir) / f"step{step:06d}.png"
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    return path


def class_image_generator(pipeline, resolution: int, steps: int = 30, scheduler: str | None = None):
    """`generate(prompts, seeds) -> images` for prior preservation, with the base model (no adapters yet):
    `steps` denoising steps with sampler `scheduler` (default: the model's own); the pipeline's scheduler is
    put back afterwards."""

    def generate(prompts: list[str], seeds: list[int]):
        from sd_lora.inference import set_scheduler

        generators = [torch.Generator().manual_seed(s) for s in seeds]
        before = pipeline.scheduler
        if scheduler:
            set_scheduler(pipeline, scheduler)
        try:
            with torch.no_grad():
                return pipeline(prompts, generator=generators, height=resolution, width=resolution,
                                num_inference_steps=steps).images
        finally:
            pipeline.scheduler = before

    return generate
