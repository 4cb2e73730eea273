"""Train mode while training, eval mode for validation and samples: adapter dropout stays on after a sample grid,
the validation loss is deterministic with dropout, and text-encoder gradient checkpointing really runs."""

from __future__ import annotations

import torch

from sd_lora.train.recipe import LoRARecipe
from tests.train.conftest import tiny_config


def _dropout_layers(model):
    return [m for n, m in model.named_modules() if n.endswith("lora_dropout.default")]


def _randomise_lora_b(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_dropout_stays_on_in_training_after_a_sample_grid(tiny_sd1_dir, tiny_dataset, tmp_path):
    cfg = tiny_config(tiny_sd1_dir, tiny_dataset, tmp_path / "out", network={"dropout": 0.5},
                      train={"max_steps": 3}, sample={"every_n_steps": 1, "prompts": ["a red square"], "steps": 1},
                      output={"log_with": "none"})
    recipe = LoRARecipe(cfg)
    recipe.setup()
    seen = []  # (grad enabled, dropout layer in training mode) for every forward through one adapter layer
    layer = _dropout_layers(recipe.denoiser)[0]
    layer.register_forward_pre_hook(lambda m, _: seen.append((torch.is_grad_enabled(), m.training)))
    recipe.train()
    recipe.cleanup()
    training = [mode for grad, mode in seen if grad]
    sampling = [mode for grad, mode in seen if not grad]
    assert len(training) == 3 and all(training), seen  # steps 2 and 3 come after the step-1 and step-2 grids
    assert sampling and not any(sampling), seen


def test_validation_loss_is_deterministic_with_dropout_and_training_mode_comes_back(tiny_sd1_dir, tiny_dataset,
                                                                                     tmp_path):
    cfg = tiny_config(tiny_sd1_dir, tiny_dataset, tmp_path / "out", network={"dropout": 0.5},
                      data={"validation_split": 0.5}, output={"log_with": "none"})
    recipe = LoRARecipe(cfg)
    recipe.setup()
    _randomise_lora_b(recipe.denoiser)  # with B = 0 dropout would change nothing
    recipe._set_train_mode(True)
    first, second = recipe.validation_loss(), recipe.validation_loss()
    assert first == second
    assert recipe.denoiser.training and all(m.training for m in _dropout_layers(recipe.denoiser))
    batch = next(iter(recipe.dataloader))  # the training loss *does* see dropout: two passes differ
    losses = []
    for _ in range(2):
        recipe.generator.manual_seed(0)
        with torch.no_grad():
            losses.append(recipe.compute_loss(batch).item())
    assert losses[0] != losses[1]
    recipe.cleanup()


def test_text_encoder_gradient_checkpointing_runs_in_training(tiny_sd1_dir, tiny_dataset, tmp_path):
    cfg = tiny_config(tiny_sd1_dir, tiny_dataset, tmp_path / "out", output={"log_with": "none"},
                      network={"train_text_encoder": True}, train={"gradient_checkpointing": True})
    recipe = LoRARecipe(cfg)
    recipe.setup()
    calls = []
    for module in recipe.text_encoders[0].modules():
        original = getattr(module, "_gradient_checkpointing_func", None)
        if original is not None:
            def counted(*args, _original=original, **kwargs):
                calls.append(1)
                return _original(*args, **kwargs)
            module._gradient_checkpointing_func = counted
    recipe._set_train_mode(True)
    recipe.train_step(next(iter(recipe.dataloader)))
    layers = recipe.text_encoders[0].config.num_hidden_layers
    assert len(calls) >= layers, (len(calls), layers)
    recipe.cleanup()
