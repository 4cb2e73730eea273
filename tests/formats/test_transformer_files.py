"""SD3 / FLUX adapter files: exact fusing, export -> import of every module's ΔW, foreign layouts, metadata."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from sd_lora.errors import SdLoraError
from sd_lora.formats import apply_adapter_file, convert_file, load_adapter_file, save_adapter, summarize_file
from sd_lora.formats.fused import fuse, split
from tests.formats import transformer_helpers as th


def _delta(p):
    return p["lora_B"].double() @ p["lora_A"].double() * (float(p["alpha"]) / p["lora_A"].shape[0])


def _lora(out, inp, r, alpha, seed):
    g = torch.Generator().manual_seed(seed)
    return {"lora_A": torch.randn(r, inp, generator=g), "lora_B": torch.randn(out, r, generator=g),
            "alpha": torch.tensor(float(alpha))}


def test_fuse_is_block_diagonal_with_alpha_times_three_and_splits_back_to_the_same_factors():
    parts = [_lora(8, 6, 2, 3.0, s) for s in range(3)]
    fused = fuse(parts, (8, 8, 8))
    assert fused["lora_A"].shape == (6, 6) and fused["lora_B"].shape == (24, 6)
    assert float(fused["alpha"]) == 9.0  # 3a: alpha / rank stays a / r
    assert torch.equal(fused["lora_B"][:8, 2:], torch.zeros(8, 4))  # block diagonal
    torch.testing.assert_close(_delta(fused), torch.cat([_delta(p) for p in parts]), rtol=0, atol=1e-6)
    back = split(fused, (8, 8, 8))
    for original, piece in zip(parts, back):
        assert torch.equal(piece["lora_A"], original["lora_A"]) and torch.equal(piece["lora_B"], original["lora_B"])
        assert float(piece["alpha"]) == 3.0


def test_linear1_fuses_unequal_blocks_with_different_scales_and_leaves_the_untrained_mlp_out():
    sizes = (4, 4, 4, 16)
    parts = [_lora(4, 6, 2, 1.0, 0), _lora(4, 6, 3, 6.0, 1), _lora(4, 6, 2, 1.0, 2), None]
    fused = fuse(parts, sizes)
    assert fused["lora_B"].shape == (28, 7)
    want = torch.cat([_delta(parts[0]), _delta(parts[1]), _delta(parts[2]), torch.zeros(16, 6, dtype=torch.double)])
    torch.testing.assert_close(_delta(fused), want, rtol=0, atol=1e-6)
    back = split(fused, sizes)
    assert back[3] is None
    for original, piece in zip(parts[:3], back[:3]):
        torch.testing.assert_close(_delta(piece), _delta(original), rtol=0, atol=1e-6)


def test_a_dense_kohya_style_up_splits_into_exact_slices():
    fused = _lora(3 * 8 + 32, 6, 5, 2.5, 7)  # trained fused: every row uses every column
    pieces = split(fused, (8, 8, 8, 32))
    rows = [0, 8, 16, 24, 56]
    for piece, a, b in zip(pieces, rows, rows[1:]):
        assert piece["lora_A"].shape == (5, 6)
        torch.testing.assert_close(_delta(piece), _delta(fused)[a:b], rtol=0, atol=1e-6)


def _outputs(comps, name="default"):
    return {c: th.adapted_outputs(m, name) for c, m in comps.items()}


def _assert_same(a, b):
    assert {c: sorted(m) for c, m in a.items()} == {c: sorted(m) for c, m in b.items()}
    for c in a:
        for path in a[c]:
            torch.testing.assert_close(b[c][path], a[c][path], rtol=0, atol=1e-5, msg=f"{c}.{path}")


@pytest.mark.parametrize("family, method, targets", [
    ("sd3", "lora", th.ATTENTION), ("flux", "lora", th.ATTENTION), ("sd3", "lora", th.EVERYTHING),
    ("flux", "lora", th.EVERYTHING), ("sd3", "dora", th.ATTENTION), ("flux", "loha", th.ATTENTION)])
def test_export_then_import_reproduces_every_module(tmp_path, family, method, targets):
    trained = th.adapt(th.models(family), method, targets)
    path = tmp_path / "a.safetensors"
    report = save_adapter(path, trained, family, unet_config=trained["transformer"].config,
                          save_precision=torch.float32)
    assert report.complete
    keys = set(load_file(path))
    if method == "lora":
        assert any(k.startswith("lora_unet_") and "_qkv." in k or "_linear1." in k for k in keys)
        assert not any(k.startswith("lycoris_") for k in keys)
    else:  # products that do not fuse: SimpleTuner's per-module names, which ComfyUI maps onto the slices
        assert any(k.startswith("lycoris_transformer_blocks_0_attn_to_q.") for k in keys)
    fresh = th.models(family)
    report = apply_adapter_file(th.pipe_of(fresh), path, "imported")
    assert report.family == family
    _assert_same(_outputs(trained), _outputs(fresh, "imported"))


def test_kohya_names_of_the_text_encoders_and_the_fused_modules(tmp_path):
    trained = th.adapt(th.models("sd3"), "lora", th.EVERYTHING)
    save_adapter(tmp_path / "a.safetensors", trained, "sd3", unet_config=trained["transformer"].config)
    tensors = load_file(tmp_path / "a.safetensors")
    assert tensors["lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight"].shape == (12, 32)
    assert tensors["lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight"].shape == (96, 12)
    assert float(tensors["lora_unet_joint_blocks_0_x_block_attn_qkv.alpha"]) == 6.0  # 3 x alpha 2
    assert "lora_unet_joint_blocks_0_x_block_attn2_qkv.lora_up.weight" in tensors
    assert "lora_unet_joint_blocks_1_context_block_attn_proj.alpha" not in tensors  # pre-only last block
    assert "lora_unet_final_layer_adaLN_modulation_1.lora_up.weight" in tensors
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in tensors
    assert "lora_te2_text_model_encoder_layers_1_mlp_fc2.lora_up.weight" in tensors
    assert "lora_te3_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight" in tensors
    assert "lora_te3_encoder_block_1_layer_1_DenseReluDense_wi_0.lora_up.weight" in tensors


def test_flux_t5_is_lora_te3_and_onetrainers_lora_te2_reads_too(tmp_path):
    trained = th.adapt(th.models("flux"))
    path = tmp_path / "a.safetensors"
    save_adapter(path, trained, "flux", unet_config=trained["transformer"].config, save_precision=torch.float32)
    tensors = load_file(path)
    assert any(k.startswith("lora_te3_encoder_block_0_layer_0_SelfAttention_q.") for k in tensors)
    renamed = {k.replace("lora_te3_", "lora_te2_"): v for k, v in tensors.items()}
    save_file(renamed, tmp_path / "onetrainer.safetensors")
    fresh = th.models("flux")
    apply_adapter_file(th.pipe_of(fresh), tmp_path / "onetrainer.safetensors", "ot")
    _assert_same(_outputs(trained), _outputs(fresh, "ot"))


def _neutral(trained) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    from sd_lora.formats.peft_bridge import collect_adapter_weights

    return collect_adapter_weights({"transformer": trained["transformer"]}, "default")["transformer"]


def _foreign(modules, layout: str) -> dict[str, torch.Tensor]:
    """The transformer's LoRA spelled as other trainers write it (names built here, independently of sd-lora)."""
    out = {}
    for path, p in modules.items():
        flat = path.replace(".", "_")
        name, down, up = {
            "diffusers": (f"transformer.{path}", "lora_A.weight", "lora_B.weight"),
            "peft": (f"base_model.model.{path}", "lora_A.weight", "lora_B.weight"),
            "onetrainer": (f"lora_transformer_{flat}", "lora_down.weight", "lora_up.weight"),
            "lycoris": (f"lycoris_{flat}", "lora_down.weight", "lora_up.weight"),
        }[layout]
        out[f"{name}.{down}"], out[f"{name}.{up}"] = p["lora_A"].contiguous(), p["lora_B"].contiguous()
        if layout != "diffusers":
            out[f"{name}.alpha"] = p["alpha"]
    return out


@pytest.mark.parametrize("family", ["sd3", "flux"])
@pytest.mark.parametrize("layout", ["diffusers", "peft", "onetrainer", "lycoris"])
def test_diffusers_path_layouts_import_at_a_scale(tmp_path, family, layout):
    # a diffusers file without its LoraConfig metadata means scale 1, so train with alpha = rank there
    trained = th.adapt({"transformer": th.transformer(family)}, "lora", th.EVERYTHING,
                       alpha=4 if layout == "diffusers" else 2)
    modules = _neutral(trained)
    save_file(_foreign(modules, layout), tmp_path / "f.safetensors")
    fresh = {"transformer": th.transformer(family)}
    adapter = load_adapter_file(tmp_path / "f.safetensors")
    assert adapter.family == family
    apply_adapter_file(th.pipe_of(fresh), tmp_path / "f.safetensors", "f")
    _assert_same(_outputs(trained), _outputs(fresh, "f"))
    _assert_scaled(trained["transformer"], fresh["transformer"], 0.4)


def _assert_scaled(trained, fresh, scale):
    """At adapter scale `scale` each imported layer adds `scale` times the trained layer's update."""
    from sd_lora.formats.peft_bridge import adapted_modules

    want = th.adapted_outputs(trained, "default")
    for layer in adapted_modules(fresh, "f").values():
        layer.set_scale("f", scale)
    got = th.adapted_outputs(fresh, "f")
    for path in want:
        torch.testing.assert_close(got[path], want[path] * scale, rtol=0, atol=1e-5)


def _original_layout(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A kohya FLUX file respelled as ai-toolkit / ComfyUI write it: `diffusion_model.<original>` + peft suffixes."""
    out = {}
    for key, t in tensors.items():
        name, _, suffix = key.partition(".")
        original = name[len("lora_unet_"):]
        dotted = original.replace("double_blocks_", "double_blocks.").replace("single_blocks_", "single_blocks.")
        dotted = dotted.replace("_img_attn_", ".img_attn.").replace("_txt_attn_", ".txt_attn.")
        dotted = dotted.replace("_linear1", ".linear1").replace("_linear2", ".linear2")
        new = {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight"}.get(suffix, suffix)
        out[f"diffusion_model.{dotted}.{new}"] = t
    return out


def test_ai_toolkit_comfy_layout_and_xlabs_import_flux(tmp_path):
    trained = th.adapt({"transformer": th.transformer("flux")}, "lora", ["to_q", "to_k", "to_v", "to_out.0",
                                                                      "add_q_proj", "add_k_proj", "add_v_proj",
                                                                      "to_add_out", "proj_out"])
    save_adapter(tmp_path / "k.safetensors", trained, "flux", unet_config=trained["transformer"].config,
                 save_precision=torch.float32)
    kohya = load_file(tmp_path / "k.safetensors")
    blocks = {k: v for k, v in kohya.items() if "_blocks_" in k and ("attn" in k or "linear" in k)}
    save_file(_original_layout(blocks), tmp_path / "comfy.safetensors")
    fresh = {"transformer": th.transformer("flux")}
    apply_adapter_file(th.pipe_of(fresh), tmp_path / "comfy.safetensors", "f")
    want = {p: o for p, o in th.adapted_outputs(trained["transformer"], "default").items()
            if p.startswith(("transformer_blocks", "single_transformer_blocks"))}
    _assert_same({"t": want}, {"t": th.adapted_outputs(fresh["transformer"], "f")})

    # XLabs: no alpha (scale 1), q/k/v as one module per stream, single blocks' qkv_lora = linear1's q/k/v rows
    xlabs, names = {}, {"img_attn_qkv": "qkv_lora1", "img_attn_proj": "proj_lora1", "txt_attn_qkv": "qkv_lora2",
                        "txt_attn_proj": "proj_lora2"}
    g = torch.Generator().manual_seed(3)
    for block in range(2):
        for ours, theirs in names.items():
            out = 96 if "qkv" in ours else 32
            xlabs[f"double_blocks.{block}.processor.{theirs}.down.weight"] = torch.randn(4, 32, generator=g)
            xlabs[f"double_blocks.{block}.processor.{theirs}.up.weight"] = torch.randn(out, 4, generator=g)
        xlabs[f"single_blocks.{block}.processor.qkv_lora.down.weight"] = torch.randn(4, 32, generator=g)
        xlabs[f"single_blocks.{block}.processor.qkv_lora.up.weight"] = torch.randn(96, 4, generator=g)
    save_file(xlabs, tmp_path / "xlabs.safetensors")
    fresh = {"transformer": th.transformer("flux")}
    assert load_adapter_file(tmp_path / "xlabs.safetensors").family == "flux"
    report = apply_adapter_file(th.pipe_of(fresh), tmp_path / "xlabs.safetensors", "x")
    assert report.modules == {"transformer": 2 * (3 + 1 + 3 + 1) + 2 * 3}
    layer = dict(fresh["transformer"].named_modules())["transformer_blocks.1.attn.add_k_proj"]
    up, down = (xlabs[f"double_blocks.1.processor.qkv_lora2.{s}.weight"] for s in ("up", "down"))
    torch.testing.assert_close(layer.get_delta_weight("x"), up[32:64] @ down, rtol=0, atol=1e-6)
    single = dict(fresh["transformer"].named_modules())["single_transformer_blocks.0.attn.to_v"]
    up, down = (xlabs[f"single_blocks.0.processor.qkv_lora.{s}.weight"] for s in ("up", "down"))
    torch.testing.assert_close(single.get_delta_weight("x"), up[64:] @ down, rtol=0, atol=1e-6)


def test_a_kohya_file_with_a_dense_fused_up_imports_exactly(tmp_path):
    g = torch.Generator().manual_seed(1)
    down, up = torch.randn(6, 32, generator=g), torch.randn(32 * 3 + 128, 6, generator=g)
    save_file({"lora_unet_single_blocks_1_linear1.lora_down.weight": down,
               "lora_unet_single_blocks_1_linear1.lora_up.weight": up,
               "lora_unet_single_blocks_1_linear1.alpha": torch.tensor(3.0)}, tmp_path / "k.safetensors")
    fresh = {"transformer": th.transformer("flux")}
    report = apply_adapter_file(th.pipe_of(fresh), tmp_path / "k.safetensors", "k", family="flux")
    assert report.modules == {"transformer": 4}
    named = dict(fresh["transformer"].named_modules())
    rows = {"attn.to_q": (0, 32), "attn.to_k": (32, 64), "attn.to_v": (64, 96), "proj_mlp": (96, 224)}
    for part, (a, b) in rows.items():
        delta = named[f"single_transformer_blocks.1.{part}"].get_delta_weight("k")
        torch.testing.assert_close(delta, (up @ down * 0.5)[a:b], rtol=0, atol=1e-6)


def test_loha_on_a_fused_kohya_module_is_refused_by_name(tmp_path):
    g = torch.Generator().manual_seed(1)
    name = "lora_unet_double_blocks_0_img_attn_qkv"
    save_file({f"{name}.hada_w1_a": torch.randn(96, 2, generator=g), f"{name}.hada_w1_b": torch.randn(2, 32),
               f"{name}.hada_w2_a": torch.randn(96, 2), f"{name}.hada_w2_b": torch.randn(2, 32),
               f"{name}.alpha": torch.tensor(1.0)}, tmp_path / "h.safetensors")
    with pytest.raises(SdLoraError, match="double_blocks.0.img_attn.qkv.*cannot be split exactly"):
        apply_adapter_file(th.pipe_of({"transformer": th.transformer("flux")}), tmp_path / "h.safetensors", "h")


@pytest.mark.parametrize("family, config, architecture, version", [
    ("sd3", th.SD3_TINY, "stable-diffusion-3-5-medium/lora", "5-medium"),
    ("sd3", {**th.SD3_TINY, "dual_attention_layers": ()}, "stable-diffusion-3-5-large/lora", "5-large"),
    ("sd3", {**th.SD3_TINY, "dual_attention_layers": (), "qk_norm": None}, "stable-diffusion-3-medium/lora", "medium"),
    ("flux", th.FLUX_TINY, "flux-1-dev/lora", "flux1"),
    ("flux", {**th.FLUX_TINY, "guidance_embeds": False}, "flux-1-schnell/lora", "flux1")])
def test_metadata_names_the_model_as_kohya_does(tmp_path, family, config, architecture, version):
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    model = (SD3Transformer2DModel if family == "sd3" else FluxTransformer2DModel)(**config)
    trained = th.adapt({"transformer": model})
    save_adapter(tmp_path / "a.safetensors", trained, family, unet_config=model.config)
    meta = load_adapter_file(tmp_path / "a.safetensors").metadata
    assert meta["modelspec.architecture"] == architecture
    assert meta["ss_base_model_version"] == version
    assert meta["modelspec.resolution"] == "1024x1024"
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2.0"


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_diffusers_format_is_what_diffusers_reads(tmp_path, family):
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    trained = th.adapt({"transformer": th.transformer(family)})
    path = tmp_path / "d.safetensors"
    save_adapter(path, trained, family, unet_config=trained["transformer"].config, format="diffusers",
                 save_precision=torch.float32)
    assert all(k.startswith("transformer.") for k in load_file(path))
    loader = StableDiffusion3Pipeline if family == "sd3" else FluxPipeline
    state, metadata = loader.lora_state_dict(str(path), return_lora_metadata=True)
    fresh = th.transformer(family)
    fresh.load_lora_adapter(state, prefix="transformer", adapter_name="d", metadata=metadata)
    want = th.adapted_outputs(trained["transformer"], "default")
    got = th.adapted_outputs(fresh, "d")
    _assert_same({"t": want}, {"t": got})


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_convert_both_ways_and_inspect(tmp_path, family):
    trained = th.adapt(th.models(family), "lora", th.EVERYTHING)
    src = tmp_path / "k.safetensors"
    save_adapter(src, trained, family, unet_config=trained["transformer"].config, save_precision=torch.float32)
    convert_file(src, tmp_path / "d.safetensors", "diffusers")
    convert_file(tmp_path / "d.safetensors", tmp_path / "k2.safetensors", "community")
    assert all(k.split(".")[0] in ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
               for k in load_file(tmp_path / "d.safetensors"))
    for converted in ("d", "k2"):
        fresh = th.models(family)
        apply_adapter_file(th.pipe_of(fresh), tmp_path / f"{converted}.safetensors", "c")
        _assert_same(_outputs(trained), _outputs(fresh, "c"))
    summary = summarize_file(src)
    assert summary["family"] == family and summary["format"] == "community"
    assert set(summary["modules"]) >= {"transformer", "text_encoder"}
    assert json.loads(summary["metadata"]["sd_lora.unet_layout"])["num_layers"] == 2


def test_shift_scale_halves_follow_diffusers_own_converter(tmp_path):
    """The original final / last-context modulation keep (shift, scale); diffusers' converter swaps the halves."""
    from diffusers.loaders.single_file_utils import swap_scale_shift

    g = torch.Generator().manual_seed(2)
    tensors = {}
    for name in ("final_layer_adaLN_modulation_1", "joint_blocks_1_context_block_adaLN_modulation_1",
                 "joint_blocks_0_context_block_adaLN_modulation_1"):
        rows = 64 if "final" in name or "blocks_1" in name else 192
        tensors[f"lora_unet_{name}.lora_down.weight"] = torch.randn(3, 32, generator=g)
        tensors[f"lora_unet_{name}.lora_up.weight"] = torch.randn(rows, 3, generator=g)
    save_file(tensors, tmp_path / "k.safetensors")
    fresh = {"transformer": th.transformer("sd3")}
    apply_adapter_file(th.pipe_of(fresh), tmp_path / "k.safetensors", "k", family="sd3")
    named = dict(fresh["transformer"].named_modules())
    for name, path, swapped in [("final_layer_adaLN_modulation_1", "norm_out.linear", True),
                                ("joint_blocks_1_context_block_adaLN_modulation_1",
                                 "transformer_blocks.1.norm1_context.linear", True),
                                ("joint_blocks_0_context_block_adaLN_modulation_1",
                                 "transformer_blocks.0.norm1_context.linear", False)]:
        original = tensors[f"lora_unet_{name}.lora_up.weight"] @ tensors[f"lora_unet_{name}.lora_down.weight"]
        want = swap_scale_shift(original, 32) if swapped else original
        torch.testing.assert_close(named[path].get_delta_weight("k"), want, rtol=0, atol=1e-6)


def test_reports_name_modules_as_the_file_does():
    from sd_lora.formats.names import module_to_community

    cfg = th.FLUX_TINY
    assert module_to_community("transformer", "transformer_blocks.0.attn.to_k", "flux", cfg) == \
        "lora_unet_double_blocks_0_img_attn_qkv:to_k"
    assert module_to_community("transformer", "single_transformer_blocks.1.proj_out", "flux", cfg) == \
        "lora_unet_single_blocks_1_linear2"
    assert module_to_community("text_encoder_2", "encoder.block.0.layer.0.SelfAttention.q", "flux", cfg) == \
        "lora_te3_encoder_block_0_layer_0_SelfAttention_q"
    assert module_to_community("text_encoder_2", "text_model.encoder.layers.0.mlp.fc1", "sd3", th.SD3_TINY) == \
        "lora_te2_text_model_encoder_layers_0_mlp_fc1"


def test_a_fused_dora_module_splits_by_rows(tmp_path):
    """DoRA's magnitude is one value per output row, so each q/k/v block keeps its rows of it exactly."""
    g = torch.Generator().manual_seed(8)
    name = "lora_unet_double_blocks_1_txt_attn_qkv"
    down, up = torch.randn(4, 32, generator=g) * 0.1, torch.randn(96, 4, generator=g) * 0.1
    fresh = {"transformer": th.transformer("flux")}
    named = dict(fresh["transformer"].named_modules())
    parts = [named[f"transformer_blocks.1.attn.add_{x}_proj"] for x in "qkv"]
    fused_w = torch.cat([p.weight.detach() for p in parts])
    magnitude = (fused_w + up @ down).norm(dim=1, keepdim=True) * (1 + 0.2 * torch.rand(96, 1, generator=g))
    save_file({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(4.0),
               f"{name}.dora_scale": magnitude}, tmp_path / "d.safetensors")
    x = torch.randn(3, 32, generator=g)
    with torch.no_grad():
        adapted = fused_w + up @ down
        want = x @ (magnitude * adapted / adapted.norm(dim=1, keepdim=True)).T + torch.cat([p.bias for p in parts])
    apply_adapter_file(th.pipe_of(fresh), tmp_path / "d.safetensors", "d", family="flux")
    named = dict(fresh["transformer"].named_modules())  # the adapted layers now wrap the originals
    with torch.no_grad():
        got = torch.cat([named[f"transformer_blocks.1.attn.add_{x_}_proj"](x) for x_ in "qkv"], dim=1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_an_untrained_adapter_saves_and_changes_nothing(tmp_path, family):
    from peft import LoraConfig, inject_adapter_in_model

    comps = th.models(family)
    targets = th.ATTENTION + th.TE_TARGETS + th.T5_TARGETS
    for model in comps.values():
        inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=targets), model)
    report = save_adapter(tmp_path / "zero.safetensors", comps, family, unet_config=comps["transformer"].config)
    assert report.complete  # peft starts every up at zero: nothing to apply for the fused transformer modules
    fresh = th.models(family)
    applied = apply_adapter_file(th.pipe_of(fresh), tmp_path / "zero.safetensors", "z")
    assert applied.modules["text_encoder"] > 0


def test_unet_files_in_the_shared_layouts_are_not_taken_for_transformers():
    from sd_lora.formats.detect import guess_family

    down = torch.zeros(4, 320)
    assert guess_family({"lycoris_down_blocks_0_attentions_0_proj_in.lora_down.weight": down}, {})[0] is None
    assert guess_family({"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight": down},
                        {})[0] == "sdxl"
    assert guess_family({"lycoris_transformer_blocks_0_attn_to_q.lora_down.weight": torch.zeros(4, 3072)},
                        {})[0] == "flux"
    assert guess_family({"lycoris_transformer_blocks_0_attn_to_q.lora_down.weight": torch.zeros(4, 2432)},
                        {})[0] == "sd3"


def test_a_flux_file_on_an_sd3_pipeline_is_one_clear_error_and_changes_nothing(tmp_path):
    trained = th.adapt({"transformer": th.transformer("flux")})
    save_adapter(tmp_path / "flux.safetensors", trained, "flux", unet_config=trained["transformer"].config)
    sd3 = {"transformer": th.transformer("sd3")}
    with pytest.raises(SdLoraError, match=r"(?s)SD3 pipeline; the keys look like FLUX\.1.*lora_unet_double_blocks_"
                                          r".*Nothing was changed"):
        apply_adapter_file(th.pipe_of(sd3), tmp_path / "flux.safetensors", "f")
    assert not hasattr(sd3["transformer"], "peft_config")


def test_the_transformer_config_decides_the_architecture_over_given_metadata(tmp_path):
    from sd_lora.formats import community_metadata

    model = th.transformer("flux")  # guidance embedding: dev
    trained = th.adapt({"transformer": model})
    given = community_metadata({"family": "flux", "model_variant": "flux-schnell", "output_name": "x"})
    save_adapter(tmp_path / "a.safetensors", trained, "flux", unet_config=model.config, metadata=given)
    meta = load_adapter_file(tmp_path / "a.safetensors").metadata
    assert meta["modelspec.architecture"] == "flux-1-dev/lora" and meta["ss_output_name"] == "x"
