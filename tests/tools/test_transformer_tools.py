"""resize and merge on SD3 / FLUX community files (kohya's fused layout, also a dense fused up as kohya trains it)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from sd_lora.formats import load_adapter_file, save_adapter
from sd_lora.tools import merge_adapters, resize_adapter
from tests.formats import transformer_helpers as th


def _deltas(path, family, config) -> dict[str, torch.Tensor]:
    weights, problems = load_adapter_file(path).weights(family, config)
    assert problems == []
    return {f"{c}.{p}": m["lora_B"].double().flatten(1) @ m["lora_A"].double().flatten(1)
            * (float(m["alpha"]) / m["lora_A"].shape[0]) for c, ms in weights.items() for p, m in ms.items()}


def _flux_file(tmp_path):
    trained = th.adapt(th.models("flux"), "lora", th.ATTENTION + ["proj_mlp", "proj_out"])
    config = trained["transformer"].config
    path = tmp_path / "flux.safetensors"
    save_adapter(path, trained, "flux", unet_config=config, save_precision=torch.float32)
    tensors = load_file(path)
    g = torch.Generator().manual_seed(4)  # single block 1's linear1 as kohya trains it: one dense rank-6 module
    name = "lora_unet_single_blocks_1_linear1"
    tensors[f"{name}.lora_down.weight"] = torch.randn(6, 32, generator=g)
    tensors[f"{name}.lora_up.weight"] = torch.randn(224, 6, generator=g)
    tensors[f"{name}.alpha"] = torch.tensor(3.0)
    save_file(tensors, path, metadata=load_adapter_file(path).metadata)
    return path, config


def test_resize_of_a_flux_file_at_full_rank_is_lossless_and_lower_rank_is_optimal(tmp_path):
    path, config = _flux_file(tmp_path)
    before = _deltas(path, "flux", config)
    resize_adapter(path, tmp_path / "same.safetensors", rank=6, save_precision="fp32")
    after = _deltas(tmp_path / "same.safetensors", "flux", config)
    assert sorted(after) == sorted(before)
    for key in before:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=1e-5, msg=key)

    report = resize_adapter(path, tmp_path / "r2.safetensors", rank=2, save_precision="fp32")
    assert max(r.new_rank for r in report.rows) == 2
    small = _deltas(tmp_path / "r2.safetensors", "flux", config)
    for key in before:
        s = torch.linalg.svdvals(before[key])
        error = torch.linalg.norm(small[key] - before[key])
        torch.testing.assert_close(error, s[2:].norm(), rtol=1e-4, atol=1e-6, msg=key)  # Eckart-Young
    tensors = load_file(tmp_path / "r2.safetensors")
    assert tensors["lora_unet_single_blocks_1_linear1.lora_down.weight"].shape == (8, 32)  # 4 blocks x rank 2
    assert load_adapter_file(tmp_path / "r2.safetensors").metadata["modelspec.architecture"] == "flux-1-dev/lora"


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_merge_concat_adds_the_weighted_updates(tmp_path, family):
    paths = []
    for seed in (0, 10):
        trained = th.adapt(th.models(family), "lora", th.ATTENTION, seed=seed)
        paths.append(tmp_path / f"{seed}.safetensors")
        save_adapter(paths[-1], trained, family, unet_config=trained["transformer"].config,
                     save_precision=torch.float32)
    config = trained["transformer"].config
    merge_adapters([f"{paths[0]}:0.7", f"{paths[1]}:-0.4"], tmp_path / "m.safetensors", save_precision="fp32")
    a, b, m = (_deltas(p, family, config) for p in (*paths, tmp_path / "m.safetensors"))
    assert sorted(m) == sorted(a)
    for key in a:
        torch.testing.assert_close(m[key], 0.7 * a[key] - 0.4 * b[key], rtol=0, atol=1e-5, msg=key)
    assert any(k.endswith("_attn_qkv.lora_up.weight") for k in load_file(tmp_path / "m.safetensors"))


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_extract_recovers_low_rank_differences_of_two_transformers(tmp_path, family):
    from sd_lora.tools import extract_adapter
    from sd_lora.tools.basemodel import BaseComponents

    base, tuned = th.models(family), th.models(family)
    g = torch.Generator().manual_seed(6)
    changed = {"transformer_blocks.0.attn.to_k", "transformer_blocks.1.ff.net.2", "transformer_blocks.0.norm1.linear"}
    if family == "flux":
        changed |= {"single_transformer_blocks.1.proj_mlp", "single_transformer_blocks.0.attn.to_q"}
    named = dict(tuned["transformer"].named_modules())
    truth = {}
    for path in changed:
        w = named[path].weight
        truth[path] = (torch.randn(w.shape[0], 2, generator=g) @ torch.randn(2, w.shape[1], generator=g)).double()
        with torch.no_grad():
            w += truth[path].float()
    extract_adapter(BaseComponents(base, family), BaseComponents(tuned, family), tmp_path / "x.safetensors", rank=2,
                    text_encoder="off", save_precision="fp32")
    got = _deltas(tmp_path / "x.safetensors", family, base["transformer"].config)
    assert sorted(got) == sorted(f"transformer.{p}" for p in changed)
    for path in changed:
        torch.testing.assert_close(got[f"transformer.{path}"], truth[path], rtol=0, atol=1e-4)


def test_resize_reports_the_modules_it_wrote(tmp_path):
    trained = th.adapt({"transformer": th.transformer("flux")}, "lora", ["to_q", "to_k", "to_v"])
    save_adapter(tmp_path / "a.safetensors", trained, "flux", unet_config=trained["transformer"].config)
    report = resize_adapter(tmp_path / "a.safetensors", tmp_path / "b.safetensors", rank=2)
    assert report.written.modules == {"transformer": 2 * 3 + 2 * 3}  # q/k/v of 2 double and 2 single blocks


@pytest.mark.parametrize("family, prefix", [("sd3", "model.diffusion_model."), ("flux", "")])
def test_bake_into_an_original_layout_transformer_file(tmp_path, family, prefix):
    """Each kohya module's update, computed from the file's own fused tensors, lands in the checkpoint tensor of
    that name; everything else is copied unchanged."""
    from sd_lora.formats.transformer_files import keys_module
    from sd_lora.tools import bake_adapters

    trained = th.adapt({"transformer": th.transformer(family)}, "lora", th.EVERYTHING)
    model = trained["transformer"]
    lora = tmp_path / "lora.safetensors"
    save_adapter(lora, trained, family, unet_config=model.config, save_precision=torch.float32)
    shapes = {n: tuple(m.weight.shape) for n, m in th.transformer(family).named_modules() if hasattr(m, "weight")
              and isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    g = torch.Generator().manual_seed(9)
    checkpoint = {}
    for name, group in keys_module(family).groups(model.config).items():
        first = shapes[group.parts[0]]
        rows = sum(shapes[p][0] for p in group.parts)
        checkpoint[f"{prefix}{name}.weight"] = torch.randn(rows, *first[1:], generator=g)
    extra = f"{prefix}{'joint_blocks.0.x_block.attn.ln_q.weight' if family == 'sd3' else 'img_in.bias'}"
    checkpoint[extra] = torch.randn(8, generator=g)
    save_file(checkpoint, tmp_path / "base.safetensors")
    bake_adapters(tmp_path / "base.safetensors", [f"{lora}:0.7"], tmp_path / "baked.safetensors",
                  save_precision="fp32")
    baked, adapter = load_file(tmp_path / "baked.safetensors"), load_file(lora)
    assert set(baked) == set(checkpoint) and torch.equal(baked[extra], checkpoint[extra])
    touched = 0
    for key, base in checkpoint.items():
        name = "lora_unet_" + key[len(prefix):-len(".weight")].replace(".", "_")
        if f"{name}.lora_down.weight" not in adapter:
            torch.testing.assert_close(baked[key], base, rtol=0, atol=0)
            continue
        down, up = adapter[f"{name}.lora_down.weight"], adapter[f"{name}.lora_up.weight"]
        delta = (up.flatten(1) @ down.flatten(1)).reshape(base.shape) * float(adapter[f"{name}.alpha"]) / len(down)
        torch.testing.assert_close(baked[key], base + 0.7 * delta, rtol=0, atol=1e-5, msg=key)
        touched += 1
    assert touched == len({k.split(".")[0] for k in adapter})


def test_bake_into_a_flux_pipeline_is_refused_clearly(tmp_path):
    import types

    from sd_lora.errors import SdLoraError
    from sd_lora.tools import bake_adapters

    trained = th.adapt({"transformer": th.transformer("flux")})
    save_adapter(tmp_path / "a.safetensors", trained, "flux", unet_config=trained["transformer"].config)
    pipe = types.SimpleNamespace(transformer=th.transformer("flux"))
    with pytest.raises(SdLoraError, match="not supported yet.*original-layout"):
        bake_adapters(pipe, [f"{tmp_path / 'a.safetensors'}:1"], tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
