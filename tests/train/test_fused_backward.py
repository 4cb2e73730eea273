"""train.fused_backward: each parameter is stepped during backward, the result is the normal step's, and what
it cannot do is refused with the reason."""

import pytest
import torch

from sd_lora.config.load import ConfigError
from sd_lora.errors import SdLoraError
from sd_lora.train.recipe import LoRARecipe
from tests.train.conftest import tiny_config

FUSED = {"fused_backward": True, "max_grad_norm": 0.0}


@pytest.fixture(autouse=True)
def fresh_accelerate():
    """Mixed precision is process-wide accelerate state: these runs use fp32 (or fp16) whatever ran before."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def _trained(recipe) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in recipe.denoiser.named_parameters() if p.requires_grad}


def _run(tiny_sd1_dir, data, out, **train):
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    recipe = LoRARecipe(tiny_config(tiny_sd1_dir, data, out, train={"max_grad_norm": 0.0, "max_steps": 6,
                                                                    "weight_decay": 0.1, **train}))
    try:
        recipe.setup()
        recipe.train()
        return _trained(recipe), recipe.losses
    finally:
        recipe.cleanup()


@pytest.mark.parametrize("optimizer", ["adamw", "lion"])
def test_fused_backward_trains_the_same_adapter(tiny_sd1_dir, tiny_dataset, tmp_path, optimizer):
    if optimizer == "lion":
        pytest.importorskip("lion_pytorch")
    normal, l1 = _run(tiny_sd1_dir, tiny_dataset, tmp_path / "a", optimizer=optimizer)
    fused, l2 = _run(tiny_sd1_dir, tiny_dataset, tmp_path / "b", optimizer=optimizer, fused_backward=True)
    assert set(normal) == set(fused) and len(normal) > 0
    for name in normal:  # the same elementwise update per parameter: equal up to float summation order
        torch.testing.assert_close(fused[name], normal[name], rtol=1e-5, atol=1e-6)
    assert l1 == pytest.approx(l2, rel=1e-5)


def test_the_step_happens_inside_backward(tiny_sd1_dir, tiny_dataset, tmp_path):
    recipe = LoRARecipe(tiny_config(tiny_sd1_dir, tiny_dataset, tmp_path / "o", train=FUSED))
    try:
        recipe.setup()
        before = _trained(recipe)
        loss = recipe.compute_loss(next(iter(recipe.dataloader)))
        loss.backward()  # no optimizer.step() call: the hooks did it
        after = _trained(recipe)
        assert sum(not torch.equal(before[n], after[n]) for n in before) == len(before)  # every parameter moved
        assert all(p.grad is None for p in recipe.denoiser.parameters())  # each gradient dropped once applied
    finally:
        recipe.cleanup()


@pytest.mark.parametrize("train, says", [
    ({"fused_backward": True}, "max_grad_norm = 0"),  # the default clips over all gradients
    ({**FUSED, "gradient_accumulation_steps": 2}, "gradient_accumulation_steps = 1"),
    ({**FUSED, "optimizer": "prodigy", "learning_rate": 1.0}, "optimizer 'prodigy' needs every gradient"),
    ({**FUSED, "optimizer": "adamw_schedulefree"}, "optimizer 'adamw_schedulefree'"),
])
def test_what_it_cannot_do_is_refused_in_the_config(tmp_path, train, says):
    with pytest.raises(ConfigError, match="train.fused_backward") as e:
        tiny_config("builtin:tiny", tmp_path, tmp_path / "o", train=train)
    assert says in str(e.value)


def test_fp16_loss_scaling_is_refused_at_setup(tiny_sd1_dir, tiny_dataset, tmp_path):
    recipe = LoRARecipe(tiny_config(tiny_sd1_dir, tiny_dataset, tmp_path / "o",
                                    train={**FUSED, "mixed_precision": "fp16"}))
    try:
        with pytest.raises(SdLoraError, match="loss scaler must see every gradient"):
            recipe.setup()
    finally:
        recipe.cleanup()
