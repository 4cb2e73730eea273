"""train.mixed_precision = "auto": what it picks on which hardware, that the recipe runs what it picked, and that
bf16 does not change what is learned (step 0 is the base; a 200-step run tracks the fp32 run)."""

import pytest
import torch

from sd_lora.train import precision
from sd_lora.train.precision import choose_precision, cpu_bf16_features
from sd_lora.train.recipe import LoRARecipe
from tests.train.conftest import tiny_config

EPYC_FLAGS = "flags\t\t: fpu vme sse sse2 avx avx2 fma f16c bmi2 vaes\n"  # this project's CPU machine (AMD Zen 3)
SAPPHIRE_FLAGS = "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
COOPER_FLAGS = "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n"


@pytest.fixture(autouse=True)
def fresh_accelerate():
    """Mixed precision is process-wide accelerate state: each test starts and ends without it."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


@pytest.mark.parametrize("cc, mode", [((9, 0), "bf16"), ((8, 0), "bf16"), ((8, 6), "bf16"), ((7, 5), "fp16"),
                                      ((7, 0), "fp16"), ((6, 1), "no")])
def test_auto_on_cuda_follows_the_compute_capability(cc, mode):
    choice = choose_precision("cuda", cuda_capability=cc)
    assert choice.mode == mode and f"{cc[0]}.{cc[1]}" in choice.reason


@pytest.mark.parametrize("cpuinfo, capability, found", [
    (EPYC_FLAGS, "AVX2", []), (SAPPHIRE_FLAGS, "AVX512", ["amx_bf16", "avx512_bf16"]),
    (COOPER_FLAGS, "AVX512", ["avx512_bf16"]), ("", "AMX", ["amx"]), ("", "AVX512", [])])
def test_cpu_bf16_is_read_from_the_feature_flags(cpuinfo, capability, found):
    assert cpu_bf16_features(cpuinfo, capability) == found


def test_auto_on_the_cpu_is_bf16_only_with_native_bf16():
    assert choose_precision("cpu", cpu_features=["amx_bf16"]).mode == "bf16"
    plain = choose_precision("cpu", cpu_features=[], cpu_capability="AVX2")
    assert plain.mode == "no" and "AVX2" in plain.reason and "emulated" in plain.reason
    assert choose_precision("mps").mode == "no"


def test_an_explicit_setting_is_kept():
    assert precision.resolve_precision("fp16").mode == "fp16"
    assert precision.resolve_precision("no").mode == "no"


def _setup(cfg):
    recipe = LoRARecipe(cfg)
    recipe.setup()
    return recipe


@pytest.mark.parametrize("features, dtype, says", [(["avx512_bf16"], torch.bfloat16, "bf16 frozen base"),
                                                   ([], torch.float32, "fp32 frozen base")])
def test_the_default_runs_what_auto_picked_and_the_plan_says_why(tiny_sd1_dir, tiny_dataset, tmp_path, capsys,
                                                                 monkeypatch, fresh_accelerate, features, dtype, says):
    monkeypatch.setattr(precision, "cpu_bf16_features", lambda *a: list(features))
    cfg = tiny_config(tiny_sd1_dir, tiny_dataset, tmp_path / "o")
    assert cfg.train.mixed_precision == "auto"
    recipe = _setup(cfg)
    try:
        out = capsys.readouterr().out
        assert f"precision: {says}, fp32 adapters [auto: " in out
        assert ("avx512_bf16" in out) == bool(features)
        frozen = {p.dtype for p in recipe.denoiser.parameters() if not p.requires_grad}
        trained = {p.dtype for p in recipe.denoiser.parameters() if p.requires_grad}
        assert frozen == {dtype} and trained == {torch.float32}
        assert recipe.cfg.train.mixed_precision == ("bf16" if features else "no")  # what the saved config records
    finally:
        recipe.cleanup()


def test_step_zero_under_bf16_is_the_base_model(tiny_sd1_dir, tiny_dataset, tmp_path, fresh_accelerate):
    from sd_lora.models.load import load_pipeline

    base = load_pipeline(str(tiny_sd1_dir))[0].unet.eval()
    recipe = _setup(tiny_config(tiny_sd1_dir, tiny_dataset, tmp_path / "o", train={"mixed_precision": "bf16"}))
    try:
        recipe.denoiser.eval()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, base.config.in_channels, 4, 4, generator=g)
        context = torch.randn(2, 77, base.config.cross_attention_dim, generator=g)
        t = torch.tensor([100, 700])
        with torch.no_grad():
            expected = base(x, t, context).sample
            with recipe.accelerator.autocast():
                got = recipe.denoiser(x.to(torch.bfloat16), t, context.to(torch.bfloat16)).sample.float()
        assert not torch.equal(got, expected)  # bf16 did run
        # bf16 keeps 8 bits of mantissa: relative error per element ~2^-8, a few roundings deep
        assert (got - expected).abs().max() <= 0.03 * expected.abs().max()
        assert torch.nn.functional.cosine_similarity(got.flatten(), expected.flatten(), dim=0) > 0.999
    finally:
        recipe.cleanup()


def _losses_and_delta(tiny_sd1_dir, data, out, mixed_precision):
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    cfg = tiny_config(tiny_sd1_dir, data, out, train={"mixed_precision": mixed_precision, "max_steps": 200,
                                                      "batch_size": 1, "log_every_n_steps": 200})
    recipe = _setup(cfg)
    try:
        recipe.train()
        deltas = {}
        for name, module in recipe.denoiser.named_modules():
            if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
                deltas[name] = (module.lora_B["default"].weight @ module.lora_A["default"].weight).detach().float()
        return torch.tensor(recipe.losses), deltas
    finally:
        recipe.cleanup()


def test_a_200_step_bf16_run_learns_what_fp32_learns(tiny_sd1_dir, tiny_dataset, tmp_path):
    fp32, d32 = _losses_and_delta(tiny_sd1_dir, tiny_dataset, tmp_path / "fp32", "no")
    bf16, d16 = _losses_and_delta(tiny_sd1_dir, tiny_dataset, tmp_path / "bf16", "bf16")
    assert len(fp32) == len(bf16) == 200
    # The same noise and timesteps each step (one seeded generator): per step the losses differ by bf16 rounding.
    # Band: each 20-step mean within 1 % of fp32's (measured on this CPU: at most 0.05 %; the curve falls from
    # 1.09 to 0.85 over the run, so the band is a twentieth of what is learned).
    w32, w16 = fp32.view(10, 20).mean(1), bf16.view(10, 20).mean(1)
    assert ((w16 - w32).abs() / w32).max() <= 0.01
    assert w32[-1] < w32[0] and w16[-1] < w16[0]  # both learn
    # what is learned: the adapters' weight updates B @ A point the same way (measured: min cosine 0.995 over
    # the adapted modules, mean 0.9995)
    cos = [torch.nn.functional.cosine_similarity(d32[k].flatten(), d16[k].flatten(), dim=0) for k in d32]
    assert min(cos) > 0.98 and sum(cos) / len(cos) > 0.995
