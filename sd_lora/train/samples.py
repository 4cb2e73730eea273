"""Sample images during training: the [sample] prompts with fixed seeds, one labelled grid per save."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["render_samples"]


def render_samples(pipeline, cfg, family: str, step: int, out_dir: Path) -> Path:
    """Render every sample prompt (seed = sample.seed + index, identical at every save) into one grid PNG."""
    from sd_lora.inference import GenerationRequest, generate_images, make_grid, set_scheduler
    from sd_lora.fileio import atomic_path

    s = cfg.sample
    width, height = s.width or cfg.data.resolution, s.height or cfg.data.resolution
    set_scheduler(pipeline, s.scheduler)
    requests = [GenerationRequest(prompt=p, negative_prompt=s.negative_prompt, seed=s.seed + i, steps=s.steps,
                                  guidance=s.guidance_scale, width=width, height=height)
                for i, p in enumerate(s.prompts)]
    was_training = [m.training for m in (pipeline.unet, pipeline.text_encoder)]
    pipeline.unet.eval()
    with torch.no_grad():
        images = generate_images(pipeline, requests, progress=False)
    for module, mode in zip((pipeline.unet, pipeline.text_encoder), was_training):
        module.train(mode)
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
