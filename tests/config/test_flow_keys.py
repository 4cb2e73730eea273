import typing

import pytest

from sd_lora.config.load import ConfigError, config_from_dict
from sd_lora.config.train import TrainConfig


def problems(**train):
    with pytest.raises(ConfigError) as e:
        config_from_dict({"train": train})
    return e.value.problems


def test_defaults():
    t = config_from_dict({}).train
    assert (t.timestep_sampling, t.logit_mean, t.logit_std, t.mode_scale, t.flow_shift, t.loss_weighting,
            t.guidance_scale) == ("auto", 0.0, 1.0, 1.29, None, "none", 1.0)


def test_valid_values_load():
    t = config_from_dict({"train": {"timestep_sampling": "mode", "mode_scale": -1.0, "flow_shift": 3.1582,
                                    "loss_weighting": "cosmap", "logit_mean": -0.5, "guidance_scale": 0.0}}).train
    assert (t.timestep_sampling, t.flow_shift, t.loss_weighting, t.guidance_scale) == ("mode", 3.1582, "cosmap", 0.0)
    assert config_from_dict({"train": {"timestep_sampling": "cosmap", "loss_weighting": "cosmap"}}).train


def test_the_schemes_are_the_flow_modules():
    from sd_lora.train.flow import LOSS_WEIGHTINGS, SAMPLING_SCHEMES

    hints = typing.get_type_hints(TrainConfig)
    assert typing.get_args(hints["timestep_sampling"]) == ("auto", *SAMPLING_SCHEMES)
    assert typing.get_args(hints["loss_weighting"]) == LOSS_WEIGHTINGS


def test_unknown_scheme_names_the_choices():
    (p,) = problems(timestep_sampling="logit-norm")
    assert p.startswith("train.timestep_sampling: must be one of 'auto' | 'logit_normal'")
    assert "did you mean 'logit_normal'?" in p
    (p,) = problems(loss_weighting="snr")
    assert p.startswith("train.loss_weighting: must be one of 'none' | 'sigma_sqrt' | 'cosmap'")


@pytest.mark.parametrize("key, value, message", [
    ("logit_std", 0.0, "train.logit_std: must be positive, got 0.0"),
    ("mode_scale", 1.8, "train.mode_scale: must be from -1 to 1.75"),
    ("mode_scale", -1.5, "train.mode_scale: must be from -1 to 1.75"),
    ("flow_shift", 0.0, "train.flow_shift: must be positive"),
    ("guidance_scale", -1.0, "train.guidance_scale: must not be negative"),
])
def test_out_of_range_values(key, value, message):
    (p,) = problems(**{key: value})
    assert p.startswith(message)


def test_nan_is_refused_once():
    (p,) = problems(logit_std=float("nan"))
    assert p.startswith("train.logit_std: must be a finite number")


def test_a_diffusers_weighting_scheme_with_another_loss_weighting_conflicts():
    (p,) = problems(timestep_sampling="sigma_sqrt", loss_weighting="cosmap")
    assert "train.loss_weighting = 'cosmap' conflicts with timestep_sampling = 'sigma_sqrt'" in p
    assert "timestep_sampling = 'uniform'" in p


def test_all_flow_problems_are_reported_together():
    found = problems(logit_std=-1.0, flow_shift=-2.0, guidance_scale=-0.5)
    assert [p.split(":", 1)[0] for p in found] == ["train.logit_std", "train.flow_shift", "train.guidance_scale"]
