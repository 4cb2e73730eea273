"""Config inputs (`sd-lora train --validate`, no model): every bad value is reported at once, by key, with what
to do; NaN/inf never pass; nothing is written."""

from __future__ import annotations

import pytest

from tests.reliability.conftest import assert_ok, assert_user_error, run_cli


def validate(tmp_path, toml: str | None = None, *sets: str):
    args = ["train"]
    if toml is not None:
        (tmp_path / "c.toml").write_text(toml)
        args += ["--config", "c.toml"]
    for item in sets:
        args += ["--set", item]
    return run_cli(*args, "--validate", cwd=tmp_path)


@pytest.mark.parametrize("section, key, value", [
    ("train", "learning_rate", "nan"),
    ("network", "alpha", "nan"),
    ("train", "noise_offset", "inf"),
    ("train", "max_grad_norm", "-inf"),
    ("sample", "guidance_scale", "nan"),
])
def test_non_finite_value_is_rejected_at_validation(tmp_path, section, key, value):
    result = validate(tmp_path, f"[{section}]\n{key} = {value}\n")
    assert_user_error(result, "train", f"{section}.{key}: must be a finite number, got {value}", "set a real value")
    assert [p.name for p in tmp_path.iterdir()] == ["c.toml"]  # validation writes nothing


def test_non_finite_override_is_rejected(tmp_path):
    result = validate(tmp_path, None, "train.learning_rate=nan")
    assert_user_error(result, "train", "train.learning_rate: must be a finite number, got nan", "command-line")


def test_non_finite_value_in_a_subset_is_rejected(tmp_path):
    toml = '[[data.subsets]]\ndir = "."\ncaption_dropout_rate = nan\n'
    assert_user_error(validate(tmp_path, toml), "train", "data.subsets[0].caption_dropout_rate: must be a finite number")


def test_every_bad_value_is_reported_at_once(tmp_path):
    toml = """
[data]
caption_dropout_rate = nan
validation_split = inf
prior_loss_weight = -1.0
[network]
alpha = nan
dropout = 2.0
[train]
learning_rate = nan
noise_offset = inf
min_snr_gamma = nan
[sample]
scheduler = "Eulr a"
guidance_scale = inf
"""
    message = assert_user_error(validate(tmp_path, toml), "train", "10 problem(s)")
    for key in ("data.caption_dropout_rate", "data.validation_split", "data.prior_loss_weight", "network.alpha",
                "network.dropout", "train.learning_rate", "train.noise_offset", "train.min_snr_gamma",
                "sample.scheduler", "sample.guidance_scale"):
        assert message.count(f"  - {key}:") == 1, (key, message)


def test_sampler_typo_is_caught_at_validation(tmp_path):
    result = validate(tmp_path, '[sample]\nscheduler = "Eulr a"\n')
    assert_user_error(result, "train", "sample.scheduler", "'Eulr a' is unknown", "did you mean 'Euler a'", "DPM++ 2M")


def test_valid_config_with_spelled_sampler_passes_and_writes_nothing(tmp_path):
    toml = '[train]\nlearning_rate = 1e-4\nnoise_offset = 0.1\n[sample]\nscheduler = "dpmpp_2m_karras"\n' \
           '[output]\ndir = "out"\n'
    result = validate(tmp_path, toml)
    assert_ok(result)
    assert "config OK" in result.stdout and not (tmp_path / "out").exists()


def test_unknown_key_names_the_closest_key(tmp_path):
    assert_user_error(validate(tmp_path, "[train]\nlearning_rat = 1e-4\n"), "train",
                      "train.learning_rat: unknown key; did you mean 'learning_rate'?")


def test_wrong_type_names_key_and_expected_type(tmp_path):
    assert_user_error(validate(tmp_path, '[train]\nmax_steps = "ten"\n'), "train",
                      "train.max_steps: expected integer, got 'ten'")


def test_missing_config_file_is_a_clear_error(tmp_path):
    result = run_cli("train", "--config", "nope.toml", "--validate", cwd=tmp_path)
    assert_user_error(result, "train", "'nope.toml' not found", "train_configs/")


def test_invalid_toml_names_the_file(tmp_path):
    assert_user_error(validate(tmp_path, "[train\nmax_steps = 1\n"), "train", "c.toml: not valid TOML")
