"""Noise and weighting variants (issue 15 item 6), each against a hand computation of kohya's definition."""

import math

import pytest
import torch

from sd_lora.config.load import ConfigError, config_from_dict
from sd_lora.train.loss import per_sample_loss, training_loss
from sd_lora.train.noise import debiased_weights, draw_training_noise, huber_threshold, multires_noise


def test_multires_noise_two_levels_by_hand():
    noise = torch.zeros(1, 1, 4, 4)
    out = multires_noise(noise, torch.Generator().manual_seed(3), iterations=5, discount=0.5)
    g = torch.Generator().manual_seed(3)
    torch.rand((), generator=g)  # r of level 0 (r**0 = 1: full size)
    level0 = torch.randn((1, 1, 4, 4), generator=g)
    torch.rand((), generator=g)  # r in [2, 4): 4 / r < 2 -> a 1x1 level, the last one
    level1 = torch.randn((1, 1, 1, 1), generator=g)
    summed = level0 + 0.5 * level1.item()  # a 1x1 level upscales to a constant
    assert torch.allclose(out, summed / summed.std(), atol=1e-6)
    assert torch.equal(noise, torch.zeros(1, 1, 4, 4))  # the input is not modified


def test_input_perturbation_changes_the_input_not_the_target():
    cfg = config_from_dict({"train": {"ip_noise_gamma": 0.1}}).train
    noise, noisy_input, t = draw_training_noise((2, 4, 8, 8), torch.Generator().manual_seed(0), cfg)
    g = torch.Generator().manual_seed(0)
    plain = torch.randn((2, 4, 8, 8), generator=g)
    torch.randint(0, 1000, (2,), generator=g)
    extra = torch.randn((2, 4, 8, 8), generator=g)
    assert torch.equal(noise, plain)  # the target is the plain noise
    assert torch.allclose(noisy_input, plain + 0.1 * extra)


def test_debiased_estimation_weights_by_hand():
    ac = torch.tensor([0.5, 0.8, 0.999999])  # SNR 1, 4, 999999 (capped at 1000)
    t = torch.tensor([0, 1, 2])
    assert torch.allclose(debiased_weights(ac, t, "epsilon"), torch.tensor([1.0, 0.5, 1 / math.sqrt(1000)]), rtol=1e-4)
    assert torch.allclose(debiased_weights(ac, t, "v_prediction"), torch.tensor([0.5, 0.2, 1 / 1001]), rtol=1e-4)


def test_huber_schedules_by_hand():
    ac = torch.tensor([0.5, 0.8])
    assert huber_threshold("constant", 0.1, ac, torch.tensor([0, 1]), 1000) == 0.1
    exp = huber_threshold("exponential", 0.1, ac, torch.tensor([0, 500, 1000]), 1000)
    assert torch.allclose(exp, torch.tensor([1.0, math.sqrt(0.1), 0.1]), rtol=1e-5)
    # snr: sigma = sqrt((1 - a) / a) = 1 and 0.5 -> (1 - c) / (1 + sigma)^2 + c
    snr = huber_threshold("snr", 0.1, ac, torch.tensor([0, 1]), 1000)
    assert torch.allclose(snr, torch.tensor([0.9 / 4 + 0.1, 0.9 / 2.25 + 0.1]), rtol=1e-5)


def test_per_sample_huber_threshold_and_mask():
    pred, target = torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    loss = per_sample_loss(pred, target, "huber", torch.tensor([1.0, 0.5]))
    assert torch.allclose(loss, torch.tensor([2 * (math.sqrt(2) - 1), 2 * 0.5 * (math.sqrt(1.25) - 0.5)]))
    smooth = per_sample_loss(pred * 0.25, target, "smooth_l1", torch.tensor([0.5, 0.1]))
    assert torch.allclose(smooth, torch.tensor([0.5 * 0.0625 / 0.5, 0.25 - 0.05]))
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, :, :4] = 1  # left half counts: the area-resized mask is 1 on the left half of the 4x4 latents
    assert torch.allclose(per_sample_loss(pred, target, "l2", mask=mask), torch.tensor([0.5, 0.5]))


class _Scheduler:
    alphas_cumprod = torch.tensor([0.5, 0.8])

    class config:
        num_train_timesteps = 1000


def test_training_loss_debiased_and_weights():
    t = config_from_dict({"train": {"debiased_estimation_loss": True}}).train
    pred, target = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    loss = training_loss(pred, target, torch.tensor([0, 1]), _Scheduler, t, "epsilon",
                         loss_weight=torch.tensor([1.0, 2.0]))
    assert loss.item() == pytest.approx((1 * 1.0 * 1 + 1 * 0.5 * 2) / 2)


def test_bad_noise_options_are_config_errors():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"train": {"huber_schedule": "snr", "multires_noise_discount": 0, "ip_noise_gamma": -1,
                                    "debiased_estimation_loss": True, "min_snr_gamma": 5}})
    text = str(e.value)
    for key in ("huber_schedule", "multires_noise_discount", "ip_noise_gamma", "debiased_estimation_loss"):
        assert key in text
