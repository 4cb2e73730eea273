"""Speed and memory options are honoured by the recipe (timings are never asserted): freed encoders, cache
placement and dtype, the text cache's key, bf16/fp16 on the CPU, fused AdamW, compile, channels-last, loader."""

import pytest
import torch

from sd_lora.data.cache import CACHE_DIRNAME
from sd_lora.train.recipe import LoRARecipe
from tests.train.conftest import tiny_config, write_dataset


@pytest.fixture
def fresh_accelerate():
    """Mixed precision is process-wide accelerate state: reset it around runs that change it."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def _setup(cfg):
    recipe = LoRARecipe(cfg)
    recipe.setup()
    return recipe


def _on_meta(module) -> bool:
    return all(p.device.type == "meta" for p in module.parameters())


def test_default_run_caches_both_and_frees_the_encoders(tiny_sd1_dir, tiny_dataset, tmp_path, capsys):
    recipe = _setup(tiny_config(tiny_sd1_dir, tiny_dataset, tmp_path / "o"))
    try:
        out = capsys.readouterr().out
        assert "[auto: on, no random crop]" in out and "memory: vae, text encoder freed" in out
        assert _on_meta(recipe.vae) and _on_meta(recipe.text_encoders[0])
        assert not _on_meta(recipe.denoiser)
        batch = next(iter(recipe.dataloader))
        assert "latents" in batch and "text_embeds" in batch
        recipe.train()  # trains without them
        assert len(recipe.losses) == 4
    finally:
        recipe.cleanup()


@pytest.mark.parametrize("extra, vae_kept, te_kept", [
    ({"sample": {"every_n_steps": 2, "prompts": ["a red square"], "steps": 1}}, True, True),
    ({"data": {"validation_split": 0.25}}, True, True),
    ({"network": {"train_text_encoder": True}}, False, True),
    ({"data": {"cache_text_encoder_outputs": False}}, False, True),
    ({"data": {"cache_latents": False}}, True, False),
])
def test_encoders_are_kept_while_something_needs_them(tiny_sd1_dir, tmp_path, extra, vae_kept, te_kept):
    data = write_dataset(tmp_path / "data", n=4)
    recipe = _setup(tiny_config(tiny_sd1_dir, data, tmp_path / "o", **extra))
    try:
        assert (not _on_meta(recipe.vae), not _on_meta(recipe.text_encoders[0])) == (vae_kept, te_kept)
        if extra.get("sample"):
            recipe.train()  # samples render with the kept encoders
    finally:
        recipe.cleanup()


def test_memory_budget_zero_streams_both_caches_from_disk(tiny_sd1_dir, tiny_dataset, tmp_path, capsys):
    cfg = tiny_config(tiny_sd1_dir, tiny_dataset, tmp_path / "o", data={"cache_memory_gb": 0.0})
    recipe = _setup(cfg)
    try:
        out = capsys.readouterr().out
        assert "latent cache: 4 image(s) encoded" in out and "streamed from disk" in out
        assert len(list((tiny_dataset / CACHE_DIRNAME).glob("*.safetensors"))) == 4
        assert len(list((tiny_dataset / CACHE_DIRNAME / "text").glob("*.safetensors"))) == 4
        ds = recipe.dataloader.dataset
        assert ds.latent_cache.memory == {} and ds.text_cache.memory == {}
        recipe.train()
        assert len(recipe.losses) == 4
    finally:
        recipe.cleanup()


def test_text_disk_cache_is_reused_by_the_next_run_and_keyed_by_encoding_options(tiny_sd1_dir, tiny_dataset,
                                                                                  tmp_path, capsys):
    runs = {}
    for name, train in [("a", {}), ("b", {}), ("c", {"clip_skip": 2})]:
        recipe = _setup(tiny_config(tiny_sd1_dir, tiny_dataset, tmp_path / name, train=train,
                                    data={"cache_text_encoder_outputs_to_disk": True}))
        runs[name] = (capsys.readouterr().out, recipe.text_cache_settings)
        recipe.cleanup()
    assert "(4 encoded, 0 reused from the disk cache; streamed from disk)" in runs["a"][0]
    assert "(0 encoded, 4 reused from the disk cache; streamed from disk)" in runs["b"][0]
    assert "(4 encoded, 0 reused" in runs["c"][0]  # another clip skip is another encoding
    assert runs["a"][1]["clip_skip"] == 1 and runs["c"][1]["clip_skip"] == 2
    assert runs["a"][1]["max_token_length"] == 75
    assert len(list((tiny_dataset / CACHE_DIRNAME / "text").glob("*.safetensors"))) == 8


def test_sdxl_text_cache_on_disk_keeps_the_pooled_output(tiny_sdxl_dir, tiny_dataset, tmp_path):
    recipe = _setup(tiny_config(tiny_sdxl_dir, tiny_dataset, tmp_path / "o",
                                data={"cache_text_encoder_outputs_to_disk": True}))
    try:
        embeds = next(iter(recipe.dataloader))["text_embeds"]
        assert set(embeds) == {"hidden_states", "pooled"}
        recipe.train()
        assert len(recipe.losses) == 4
    finally:
        recipe.cleanup()


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_half_precision_on_the_cpu_trains_fp32_adapters(tiny_sd1_dir, tiny_dataset, tmp_path, fresh_accelerate,
                                                        precision, dtype):
    recipe = _setup(tiny_config(tiny_sd1_dir, tiny_dataset, tmp_path / "o", train={"mixed_precision": precision}))
    try:
        trainable = [p for p in recipe.denoiser.parameters() if p.requires_grad]
        frozen = [p for p in recipe.denoiser.parameters() if not p.requires_grad]
        assert {p.dtype for p in trainable} == {torch.float32} and {p.dtype for p in frozen} == {dtype}
        assert next(iter(recipe.dataloader))["latents"].dtype == dtype  # the cache holds what the UNet reads
        before = [p.detach().clone() for p in trainable]
        recipe.train()
        assert all(torch.isfinite(torch.tensor(recipe.losses)))
        assert any(not torch.equal(a, b) for a, b in zip(before, trainable))
    finally:
        recipe.cleanup()


@pytest.mark.parametrize("impl, flags", [("auto", {"fused": True}), ("fused", {"fused": True}),
                                         ("foreach", {"foreach": True}), ("for_loop", {"foreach": False})])
def test_adamw_kernel(tiny_sd1_dir, tiny_dataset, tmp_path, impl, flags):
    recipe = _setup(tiny_config(tiny_sd1_dir, tiny_dataset, tmp_path / "o", train={"adamw_impl": impl}))
    try:
        group = recipe.optimizer.optimizer.param_groups[0] if hasattr(recipe.optimizer, "optimizer") \
            else recipe.optimizer.param_groups[0]
        assert {k: group[k] for k in flags} == flags
        if impl == "fused":
            recipe.train()
            assert len(recipe.losses) == 4
    finally:
        recipe.cleanup()


def test_compile_channels_last_and_loader_options(tiny_sd1_dir, tiny_dataset, tmp_path):
    plain = _setup(tiny_config(tiny_sd1_dir, tiny_dataset, tmp_path / "a"))
    plain.cleanup()
    assert not isinstance(plain.denoiser_forward, torch._dynamo.eval_frame.OptimizedModule)
    assert plain.dataloader.pin_memory is False  # 'auto' on the CPU
    recipe = _setup(tiny_config(tiny_sd1_dir, tiny_dataset, tmp_path / "b", data={"pin_memory": True},
                                train={"compile": True, "channels_last": True}))
    try:
        assert isinstance(recipe.denoiser_forward, torch._dynamo.eval_frame.OptimizedModule)
        convs = [m.weight for m in recipe.denoiser.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1]
        assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
        assert recipe.dataloader.pin_memory is True
        assert recipe.speed_options == {"channels_last": True, "compile": True,
                                        "cpu_allocator": recipe.speed_options["cpu_allocator"]}
    finally:
        recipe.cleanup()


def test_prefetch_factor_needs_workers():
    from sd_lora.config.data import DataConfig

    problems = DataConfig(dir="x", prefetch_factor=4).validate()
    assert len(problems) == 1 and "data.prefetch_factor: needs num_workers > 0" in problems[0]
    assert DataConfig(dir="x", prefetch_factor=4, num_workers=2).validate() == []
