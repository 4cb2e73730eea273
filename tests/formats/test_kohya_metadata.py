"""sd-lora's files against files kohya sd-scripts wrote itself (tests/formats/data/kohya/, see PROVENANCE.md):
the same ss_* keys in the same value forms, the same dataset counts, and kohya's LoRA loads to continue training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

DATA = Path(__file__).parent / "data" / "kohya"
KOHYA_FILE = DATA / "kohya_sd1_lora.safetensors"
# kohya's own git commit: nothing sd-lora can state
NOT_OURS = {"ss_sd_scripts_commit_hash"}


def _meta(path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def _form(value: str) -> str:
    """How a reader parses a value: None, bool, number, JSON or text."""
    if value == "None":
        return "none"
    if value in ("True", "False"):
        return "bool"
    try:
        float(value)
        return "number"
    except ValueError:
        pass
    try:
        json.loads(value)
        return "json"
    except ValueError:
        return "text"


@pytest.fixture(scope="module")
def ours(tiny_sd1_dir, tmp_path_factory):
    from sd_lora.train.recipe import run_training
    from tests.train.conftest import tiny_config, write_dataset

    tmp = tmp_path_factory.mktemp("ours")
    cfg = tiny_config(tiny_sd1_dir, write_dataset(tmp / "data"), tmp / "out", train={"max_steps": 2},
                      data={"enable_bucket": True, "min_bucket_reso": 16, "max_bucket_reso": 64,
                            "bucket_reso_steps": 16})
    return _meta(run_training(cfg).adapter_path)


def test_every_key_kohya_writes_is_written(ours):
    kohya = _meta(KOHYA_FILE)
    assert len([k for k in kohya if k.startswith("ss_")]) > 80
    missing = sorted(k for k in kohya if k not in ours and k not in NOT_OURS)
    assert missing == []


def test_values_have_kohyas_forms(ours):
    kohya = _meta(KOHYA_FILE)
    # keys whose form depends on the run (a None in one run is a number in another), checked by meaning below
    by_run = {"ss_unet_lr", "ss_text_encoder_lr", "ss_training_comment", "ss_sd_model_hash", "ss_new_sd_model_hash",
              "ss_bucket_info", "ss_min_bucket_reso", "ss_max_bucket_reso", "ss_multires_noise_iterations",
              "ss_network_dropout", "ss_ip_noise_gamma", "ss_noise_offset", "ss_clip_skip", "ss_max_token_length",
              "ss_min_snr_gamma", "ss_huber_schedule"}
    differ = {k: (ours[k], kohya[k]) for k in kohya if k in ours and k not in by_run and _form(ours[k]) != _form(kohya[k])}
    assert differ == {}
    assert ours["ss_optimizer"] == kohya["ss_optimizer"] == "torch.optim.adamw.AdamW"
    assert ours["ss_resolution"] == "(32, 32)" and kohya["ss_resolution"] == "(64, 64)"
    assert json.loads(ours["ss_network_args"]) and json.loads(kohya["ss_network_args"])
    buckets = json.loads(ours["ss_bucket_info"])  # kohya's layout: index -> resolution and sample count
    assert buckets["buckets"] == {"0": {"resolution": [32, 32], "count": 4}} and buckets["mean_img_ar_error"] == 0
    assert ours["ss_sd_model_name"] == Path(ours["ss_sd_model_name"]).name  # a name, never a local path
    assert (ours["ss_epoch"], ours["ss_num_epochs"], ours["ss_num_batches_per_epoch"]) == ("1", "1", "2")
    assert ours["ss_dataset_dirs"] == json.dumps({"data": {"img_count": 4, "n_repeats": 1}}, sort_keys=True)


def test_kohyas_dataset_count_is_ours(tmp_path):
    """The dataset of kohya's second run, rebuilt: kohya recorded 6 batches per epoch for it."""
    import numpy as np
    from PIL import Image

    from sd_lora.config.load import config_from_dict
    from sd_lora.data import make_plan, scan_dataset

    kohya = json.loads((DATA / "kohya_dataset_config_run_metadata.json").read_text())
    rng = np.random.default_rng(0)
    for folder, sizes in (("a", [(128, 128)] * 4 + [(192, 64)]), ("r", [(128, 128)] * 3)):
        (tmp_path / folder).mkdir()
        for i, (w, h) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / folder / f"{i}.png")
            (tmp_path / folder / f"{i}.txt").write_text("cat")
    (tmp_path / "dataset.toml").write_text((DATA / "provenance" / "dataset.toml").read_text())
    cfg = config_from_dict({"data": {"config": str(tmp_path / "dataset.toml")}, "train": {"max_epochs": 1}})
    plan = make_plan(cfg.data, scan_dataset(cfg.data), batch_size=cfg.train.batch_size, max_epochs=1)
    kohya_buckets = {tuple(b["resolution"]): b["count"] for b in
                     json.loads(kohya["ss_datasets"])[0]["bucket_info"]["buckets"].values()}
    assert plan.batches_per_epoch == int(kohya["ss_num_batches_per_epoch"]) == 6
    assert plan.max_steps == int(kohya["ss_max_train_steps"]) == 6
    assert sum(s.samples for s in plan.subsets if s.is_reg) == int(kohya["ss_num_reg_images"]) == 6
    assert sum(s.samples for s in plan.subsets if not s.is_reg) == int(kohya["ss_num_train_images"]) == 5
    ours = {}
    from sd_lora.data import build_dataset

    for bucket in build_dataset(cfg.data, scan_dataset(cfg.data)).entry_buckets():
        ours[bucket] = ours.get(bucket, 0) + 1
    assert ours == kohya_buckets == {(128, 128): 10, (192, 64): 1}


def _sd1_models():
    """The full-size SD1 UNet on the meta device (kohya's file needs its real shapes) with only the modules the
    kohya file adapts made real, and a 1-layer CLIP text encoder of width 768 (as in the kohya run)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sd_lora.formats.community import split_community_key
    from sd_lora.formats.names import community_to_module

    with torch.device("meta"):
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    names = {split_community_key(k)[0] for k in load_file(KOHYA_FILE) if k.startswith("lora_unet_")}
    named = dict(unet.named_modules())
    for name in names:
        module = named[community_to_module(name, "sd1", unet.config)[1]]
        module.weight = torch.nn.Parameter(torch.zeros(module.weight.shape))
        if module.bias is not None:
            module.bias = torch.nn.Parameter(torch.zeros(module.bias.shape))
    te = CLIPTextModel(CLIPTextConfig(vocab_size=300, hidden_size=768, intermediate_size=3072, num_hidden_layers=1,
                                      num_attention_heads=12, max_position_embeddings=77))
    return unet, te


def test_kohyas_lora_loads_strictly_to_continue_training():
    from peft import get_peft_model_state_dict

    from sd_lora.adapters import inject
    from sd_lora.formats.peft_bridge import adapted_modules
    from sd_lora.train.init_weights import read_init_weights

    unet, te = _sd1_models()
    components = {"unet": unet, "text_encoder": te}
    init = read_init_weights(KOHYA_FILE, components, "sd1", unet.config, "lora")
    assert init.adapter_type == "lora" and init.model_hash == _meta(KOHYA_FILE)["sshs_model_hash"]
    for name, model in components.items():  # network.dim_from_weights: the file's modules, ranks and alphas
        inject(model, init.peft_config(name, model))
    init.load_into(components)
    layers = adapted_modules(unet, "default")
    # 3 blocks x 12 modules (attn1/attn2 q, k, v, out; ff in, out; proj_in, proj_out)
    assert len(layers) == 36 and {m.r["default"] for m in layers.values()} == {2}
    assert {m.lora_alpha["default"] for m in layers.values()} == {1.0}
    assert len(adapted_modules(te, "default")) == 6
    file = load_file(KOHYA_FILE)
    state = get_peft_model_state_dict(unet)
    key = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k"
    torch.testing.assert_close(state["mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight"],
                               file[f"{key}.lora_down.weight"].float())
    torch.testing.assert_close(state["mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight"],
                               file[f"{key}.lora_up.weight"].float())


def test_kohyas_lora_refuses_a_run_of_another_rank():
    from sd_lora.adapters import inject
    from sd_lora.errors import SdLoraError
    from sd_lora.formats.peft_bridge import peft_adapter_for
    from sd_lora.train.init_weights import read_init_weights

    unet, te = _sd1_models()
    components = {"unet": unet, "text_encoder": te}
    init = read_init_weights(KOHYA_FILE, components, "sd1", unet.config, "lora")
    for name, model in components.items():
        modules = {p: {k: (torch.zeros(4, *v.shape[1:]) if k == "lora_A" else
                           torch.zeros(v.shape[0], 4, *v.shape[2:]) if k == "lora_B" else v)
                       for k, v in params.items()} for p, params in init.modules[name].items()}
        named = dict(model.named_modules())
        inject(model, peft_adapter_for(modules, {p: tuple(named[p].weight.shape) for p in modules})[0])
    with pytest.raises(SdLoraError) as e:
        init.load_into(components)
    assert "the file holds [2, " in str(e.value) and "adapter [4, " in str(e.value)


def test_kohyas_unset_values_read_as_unset():
    """kohya writes "None" for unset options (ss_clip_skip); generate's defaults from the file must not choke."""
    from sd_lora.inference.recipes import adapter_defaults

    assert _meta(KOHYA_FILE)["ss_clip_skip"] == "None"
    # the size it was trained at comes from its ss_resolution "(64, 64)"
    assert adapter_defaults([KOHYA_FILE]) == {"zero_terminal_snr": False, "guidance_rescale": 0.0, "resolution": (64, 64)}
