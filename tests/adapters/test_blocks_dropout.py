"""Block-wise dims/alphas/learning rates (kohya's 25 blocks) and rank/module dropout (issue 15 items 3, 4)."""

import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sd_lora.adapters.blocks import block_index
from tests.train.conftest import tiny_config, write_dataset


@pytest.mark.parametrize("name,index", [
    ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", 1),  # input_blocks.1.1
    ("down_blocks.1.attentions.0.proj_in", 4),  # input_blocks.4.1
    ("down_blocks.0.downsamplers.0.conv", 3),  # input_blocks.3.0
    ("down_blocks.3.resnets.1.conv1", 11),  # input_blocks.11.0
    ("mid_block.attentions.0.proj_out", 12),
    ("up_blocks.0.resnets.0.conv1", 13),  # output_blocks.0
    ("up_blocks.0.upsamplers.0.conv", 15),  # output_blocks.2.1
    ("up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_k", 24),  # output_blocks.11.1
    ("time_embedding.linear_1", None),
])
def test_sd1_block_index(name, index):
    assert block_index(name, 2) == index


def test_sdxl_block_index_matches_the_sgm_names(tiny_sdxl_dir):
    from diffusers import UNet2DConditionModel

    from sd_lora.formats.sdxl_names import diffusers_to_sgm

    unet = UNet2DConditionModel.from_pretrained(str(tiny_sdxl_dir / "unet"))
    checked = 0
    for name, module in unet.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) or block_index(name) is None:
            continue
        sgm = diffusers_to_sgm(name, unet.config)
        m = re.match(r"(input_blocks|output_blocks)\.(\d+)\.|middle_block\.", sgm)
        expected = 12 if m[0].startswith("middle") else int(m[2]) + (0 if m[1] == "input_blocks" else 13)
        assert block_index(name) == expected, (name, sgm)
        checked += 1
    assert checked > 20


def _recipe(cfg):
    from sd_lora.train.recipe import LoRARecipe

    recipe = LoRARecipe(cfg)
    recipe.setup()
    return recipe


def test_block_dims_alphas_and_lr_weights_in_a_run(tiny_sdxl_dir, tmp_path):
    data = write_dataset(tmp_path / "data", n=2)
    dims = [4] * 25
    dims[12] = 2  # MID: rank 2
    for i in range(13, 16):
        dims[i] = 0  # OUT00-OUT02 (up_blocks.0) not adapted
    alphas = [4.0] * 25
    alphas[12] = 1.0
    lrw = [1.0] * 25
    lrw[12] = 0.5
    cfg = tiny_config(tiny_sdxl_dir, data, tmp_path / "out", train={"max_steps": 2},
                      network={"block_dims": dims, "block_alphas": alphas, "block_lr_weights": lrw})
    recipe = _recipe(cfg)
    try:
        recipe.train()
        result = recipe.save()
    finally:
        recipe.cleanup()
    ranks = {n: m.r["default"] for n, m in recipe.denoiser.named_modules() if hasattr(m, "r") and "default" in m.r}
    assert ranks and not any(n.startswith("up_blocks.0.") for n in ranks)
    assert {r for n, r in ranks.items() if n.startswith("mid_block.")} == {2}
    assert {r for n, r in ranks.items() if n.startswith("down_blocks.")} == {4}
    lrs = {g["name"]: g["lr"] for g in recipe.optimizer.param_groups}
    assert lrs == {"unet": 1e-3, "unet_x0.5": 5e-4}
    mid_params = {id(p) for n, p in recipe.denoiser.named_parameters() if n.startswith("mid_block.") and p.requires_grad}
    half = next(g for g in recipe.optimizer.param_groups if g["name"] == "unet_x0.5")
    assert {id(p) for p in half["params"]} == mid_params
    tensors = load_file(str(result.adapter_path))
    mid_down = [v for k, v in tensors.items() if "middle_block" in k and k.endswith("lora_down.weight")]
    mid_alpha = [v for k, v in tensors.items() if "middle_block" in k and k.endswith(".alpha")]
    assert mid_down and {v.shape[0] for v in mid_down} == {2}
    assert {float(a) for a in mid_alpha} == {1.0}
    assert not any("output_blocks_0_" in k or "output_blocks_1_" in k or "output_blocks_2_" in k for k in tensors)
    with safe_open(str(result.adapter_path), "pt") as f:
        args = f.metadata()["ss_network_args"]
    assert "block_dims" in args and "mid_lr_weight" in args
    # dynamic ranks load back (generation path) and change the image
    from sd_lora.inference import AdapterSet, GenerationRequest, generate_images, load_generation_pipeline

    pipe, info = load_generation_pipeline(str(tiny_sdxl_dir), device="cpu")
    req = GenerationRequest("a red square", seed=0, steps=2, width=32, height=32)
    base = generate_images(pipe, [req], progress=False)[0].array
    adapters = AdapterSet(pipe, family="sdxl")  # weight 50: a freshly trained B is tiny
    out = generate_images(pipe, [GenerationRequest("a red square", seed=0, steps=2, width=32, height=32,
                                                   loras=[(str(result.adapter_path), 50.0)])],
                          adapters=adapters, progress=False)[0].array
    assert not (out == base).all()


def _lora_linear(rank_dropout=0.0, module_dropout=0.0):
    from peft import LoraConfig, inject_adapter_in_model

    from sd_lora.adapters.dropout import install_lora_dropout

    model = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False))
    torch.nn.init.zeros_(model[0].weight)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=["0"]), model)
    layer = model[0]
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(torch.eye(4))
        layer.lora_B["default"].weight.copy_(torch.eye(4))
    assert install_lora_dropout(model, rank_dropout, module_dropout) == 1
    return model


def test_rank_dropout_drops_channels_per_sample_and_rescales():
    model = _lora_linear(rank_dropout=0.5).train()
    x = torch.ones(2000, 4)
    torch.manual_seed(0)
    y = model(x)  # base is zero: y = B(A(x) * mask / 0.5) = mask * 2
    assert set(y.unique().tolist()) == {0.0, 2.0}
    assert abs((y == 0).float().mean().item() - 0.5) < 0.03
    assert len({tuple(r) for r in y.tolist()}) > 8  # channels drop independently per sample
    model.eval()
    assert torch.equal(model(x), x)  # no dropout outside training


def test_module_dropout_skips_the_whole_update():
    model = _lora_linear(module_dropout=0.5).train()
    x = torch.ones(3, 4)
    torch.manual_seed(0)
    dropped = 0
    for _ in range(400):
        y = model(x)
        assert torch.equal(y, x) or torch.equal(y, torch.zeros_like(x))
        if not y.any():
            dropped += 1
            y.sum().backward() if y.requires_grad else None
    assert 160 < dropped < 240
    model.zero_grad()
    torch.manual_seed(1)
    while True:  # a dropped step gives the module no gradient
        y = model(x)
        if not y.any():
            break
    y.sum().backward()
    assert model[0].lora_B["default"].weight.grad is None or not model[0].lora_B["default"].weight.grad.any()
    model.eval()
    assert all(torch.equal(model(x), x) for _ in range(20))


def test_block_and_dropout_options_are_validated():
    from sd_lora.config.load import ConfigError, config_from_dict

    with pytest.raises(ConfigError) as e:
        config_from_dict({"network": {"block_dims": [4] * 24, "block_alphas": [0.0] * 25, "rank_dropout": 1.0,
                                      "conv_block_dims": [4] * 25}})
    text = str(e.value)
    for key in ("block_dims: needs 25", "block_alphas", "rank_dropout", "conv_block_dims"):
        assert key in text
    with pytest.raises(ConfigError, match="prodigy"):
        config_from_dict({"train": {"optimizer": "prodigy", "learning_rate": 1.0},
                          "network": {"block_lr_weights": [1.0] * 12 + [0.5] + [1.0] * 12}})
