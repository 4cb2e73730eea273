"""Zero-terminal SNR on an epsilon-prediction model is allowed but warned about, in training and in generate."""

from types import SimpleNamespace

import pytest

from sd_lora.train.recipe import LoRARecipe
from tests.train.conftest import tiny_config


@pytest.mark.parametrize("model,warned", [("tiny_sd1_dir", True), ("tiny_sd2_dir", False)])
def test_training_warns_on_epsilon_models_only(request, tiny_dataset, tmp_path, capsys, model, warned):
    cfg = tiny_config(request.getfixturevalue(model), tiny_dataset, tmp_path / "out",
                      train={"zero_terminal_snr": True}, output={"log_with": "none"})
    recipe = LoRARecipe(cfg)
    recipe.setup()
    recipe.cleanup()
    out = capsys.readouterr().out
    assert ("warning: train.zero_terminal_snr on an epsilon-prediction model" in out) is warned
    assert recipe.objective.scheduler.config.rescale_betas_zero_snr  # the schedule is rescaled either way


def test_generate_warns_when_a_zero_snr_adapter_meets_an_epsilon_model(capsys):
    from sd_lora.cli.generate import _warn_zero_snr

    _warn_zero_snr(True, SimpleNamespace(prediction_type="epsilon"))
    _warn_zero_snr(True, SimpleNamespace(prediction_type="v_prediction"))
    _warn_zero_snr(False, SimpleNamespace(prediction_type="epsilon"))
    assert capsys.readouterr().out.count("trained with zero-terminal SNR, but the base model predicts epsilon") == 1
