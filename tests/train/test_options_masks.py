"""Masked loss (issue 15 item 5): alpha channels or same-stem masks weigh the per-pixel loss."""

import torch
from PIL import Image
from safetensors.torch import load_file

from tests.train.conftest import tiny_config, write_dataset


def _half_transparent(folder, n=2, size=32):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im = Image.new("RGBA", (size, size), (200, 30, 30, 255))
        im.paste((0, 0, 0, 0), (0, 0, size // 2, size))  # left half transparent
        im.save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text("a red square")
    return folder


def _recipe(cfg):
    from sd_lora.train.recipe import LoRARecipe

    recipe = LoRARecipe(cfg)
    recipe.setup()
    return recipe


def test_alpha_mask_follows_crop_and_flip_and_survives_the_latent_cache(tiny_sd1_dir, tmp_path):
    data = _half_transparent(tmp_path / "data")
    cfg = tiny_config(tiny_sd1_dir, data, tmp_path / "out", data={"alpha_mask": True, "cache_latents": True,
                                                                  "flip_aug": True})
    recipe = _recipe(cfg)
    try:
        dataset = recipe.dataloader.dataset
        assert dataset.latent_cache is not None
        masks = {}
        for epoch in range(4):
            for idx in range(len(dataset)):
                s = dataset[(idx, epoch)]
                masks[bool(s["mask"][0, :, 0].mean() > 0.5)] = s["mask"]
        assert set(masks) == {True, False}  # flipped and unflipped samples
        plain = masks[False]
        assert plain.shape == (1, 32, 32) and plain[0, :, :15].max() == 0 and plain[0, :, 17:].min() == 1
        assert torch.equal(masks[True], plain.flip(-1))
        batch = next(iter(recipe.dataloader))
        full = dict(batch, mask=torch.ones_like(batch["mask"]))
        noise, timesteps = torch.randn(batch["latents"].shape), torch.tensor([500, 500])
        masked = recipe.compute_loss(batch, noise, timesteps)
        whole = recipe.compute_loss(full, noise, timesteps)
        assert masked < whole and masked > 0
    finally:
        recipe.cleanup()


def test_fully_masked_images_teach_nothing(tiny_sd1_dir, tmp_path):
    from sd_lora.train.recipe import run_training

    data = write_dataset(tmp_path / "data", n=2)
    masks = tmp_path / "masks"
    masks.mkdir()
    for i in range(2):
        Image.new("L", (32, 32), 0).save(masks / f"img{i}.png")
    result = run_training(tiny_config(tiny_sd1_dir, data, tmp_path / "out", train={"max_steps": 2},
                                      data={"mask_dir": str(masks)}))
    assert result.losses == [0.0, 0.0]
    ups = [v for k, v in load_file(str(result.adapter_path)).items() if k.endswith("lora_up.weight")]
    assert ups and all(not v.any() for v in ups)  # B starts at zero and got no gradient
