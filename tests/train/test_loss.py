import pytest
import torch
from diffusers import DDPMScheduler

from sd_lora.models.families.unet_architectures import scheduler_config
from sd_lora.train.loss import min_snr_weights, per_sample_loss, sample_noise, weighted_mean


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_min_snr_weights_match_the_formula(prediction):
    sched = DDPMScheduler.from_config(scheduler_config("sd1"))
    t = torch.tensor([0, 10, 250, 500, 999])
    weights = min_snr_weights(sched.alphas_cumprod, t, 5.0, prediction)
    for i, step in enumerate(t.tolist()):
        a = sched.alphas_cumprod[step].item()
        snr = a / (1 - a)
        expected = min(snr, 5.0) / (snr + 1 if prediction == "v_prediction" else snr)
        assert weights[i].item() == pytest.approx(expected, rel=1e-5)
    # high-noise steps keep full weight under epsilon; low-noise steps are clipped
    if prediction == "epsilon":
        assert weights[-1].item() == pytest.approx(1.0) and weights[0].item() < 0.01


def test_huber_is_quadratic_near_zero_and_linear_far():
    target = torch.zeros(1, 4)
    small, large = torch.full((1, 4), 0.01), torch.full((1, 4), 10.0)
    c = 0.1
    assert per_sample_loss(small, target, "huber", c).item() == pytest.approx(0.01 ** 2, rel=0.01)
    assert per_sample_loss(large, target, "huber", c).item() == pytest.approx(2 * c * (10 - c), rel=0.01)
    assert per_sample_loss(large, target, "smooth_l1", c).item() == pytest.approx(10 - c / 2)
    assert per_sample_loss(large, target, "l2").item() == pytest.approx(100.0)


def test_prior_weight_scales_regularisation_samples():
    per_sample = torch.tensor([2.0, 4.0])
    assert weighted_mean(per_sample, torch.tensor([1.0, 0.5])).item() == pytest.approx((2 + 2) / 2)
    assert weighted_mean(per_sample).item() == pytest.approx(3.0)


def test_noise_offset_adds_a_per_channel_constant():
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    plain, offset = sample_noise((2, 4, 8, 8), g1), sample_noise((2, 4, 8, 8), g2, noise_offset=0.5)
    diff = offset - plain
    assert diff.std(dim=(2, 3)).max() < 1e-6 and diff.abs().mean() > 0.05
