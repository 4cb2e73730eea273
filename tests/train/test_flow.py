import math

import pytest
import torch

from sd_lora.train import flow


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---- timestep sampling ----

def test_logit_normal_is_the_sigmoid_of_the_generators_normal_draws():
    n = torch.randn(6, generator=gen(3))
    expected = torch.sigmoid(0.5 + 2.0 * n)
    got = flow.sample_sigmas(6, gen(3), "logit_normal", logit_mean=0.5, logit_std=2.0)
    torch.testing.assert_close(got, expected.clamp(flow.MIN_SIGMA, 1.0))


def test_mode_is_the_sd3_papers_f_mode_of_the_uniform_draws():
    u = torch.rand(5, generator=gen(4))
    s = 0.8
    expected = 1 - u - s * (torch.cos(math.pi / 2 * u) ** 2 - 1 + u)
    torch.testing.assert_close(flow.sample_sigmas(5, gen(4), "mode", mode_scale=s), expected.clamp(flow.MIN_SIGMA, 1))


@pytest.mark.parametrize("scheme", ["uniform", "sigma_sqrt", "cosmap"])
def test_uniform_schemes_are_the_generators_uniform_draws(scheme):
    u = torch.rand(7, generator=gen(5))
    torch.testing.assert_close(flow.sample_sigmas(7, gen(5), scheme), u.clamp(flow.MIN_SIGMA, 1))


def test_sampling_matches_diffusers_density_with_the_same_generator():
    from diffusers.training_utils import compute_density_for_timestep_sampling

    for scheme in ("logit_normal", "mode", "uniform"):
        ref = compute_density_for_timestep_sampling(scheme, 64, logit_mean=-0.3, logit_std=1.4, mode_scale=1.1,
                                                    generator=gen(9))
        got = flow.sample_sigmas(64, gen(9), scheme, logit_mean=-0.3, logit_std=1.4, mode_scale=1.1)
        torch.testing.assert_close(got, ref.clamp(flow.MIN_SIGMA, 1.0))


def test_auto_is_logit_normal():
    torch.testing.assert_close(flow.sample_sigmas(9, gen(8), "auto", shift=3.0),
                               flow.sample_sigmas(9, gen(8), "logit_normal", shift=3.0))
    assert flow.loss_weighting_for("auto", "none") == "none"


def test_positive_logit_mean_favours_noisier_timesteps():
    plain = flow.sample_sigmas(4000, gen(1), "logit_normal")
    noisy = flow.sample_sigmas(4000, gen(1), "logit_normal", logit_mean=1.0)
    assert abs(plain.median().item() - 0.5) < 0.03
    assert noisy.median().item() == pytest.approx(1 / (1 + math.exp(-1.0)), abs=0.03)


def test_mode_scale_zero_is_uniform_and_positive_scale_concentrates_in_the_middle():
    flat = flow.sample_sigmas(4000, gen(2), "mode", mode_scale=0.0)
    torch.testing.assert_close(flat, (1 - torch.rand(4000, generator=gen(2))).clamp(flow.MIN_SIGMA, 1))
    peaked = flow.sample_sigmas(4000, gen(2), "mode", mode_scale=1.29)
    mid = lambda s: ((s > 0.25) & (s < 0.75)).float().mean().item()  # noqa: E731
    assert mid(peaked) > mid(flat) + 0.1


def test_draws_are_never_zero_so_sigma_sqrt_weights_stay_finite():
    sigmas = flow.sample_sigmas(10000, gen(0), "uniform")
    assert sigmas.min().item() >= flow.MIN_SIGMA
    assert torch.isfinite(flow.loss_weights(sigmas, "sigma_sqrt")).all()


def test_unknown_scheme_and_weighting_are_refused():
    with pytest.raises(ValueError, match="logit_normal, mode"):
        flow.sample_sigmas(2, gen(), "lognorm")
    with pytest.raises(ValueError, match="none, sigma_sqrt, cosmap"):
        flow.loss_weights(torch.ones(2), "snr")


# ---- shift ----

def test_shift_matches_the_flow_match_schedulers_sigmas():
    from diffusers import FlowMatchEulerDiscreteScheduler

    plain = FlowMatchEulerDiscreteScheduler(shift=1.0).sigmas
    for shift in (3.0, 1.5, 0.5):
        ref = FlowMatchEulerDiscreteScheduler(shift=shift).sigmas
        torch.testing.assert_close(flow.shift_sigmas(plain, shift), ref)


def test_shift_by_hand_and_monotonic():
    s = torch.tensor([0.0, 0.25, 0.5, 1.0])
    torch.testing.assert_close(flow.shift_sigmas(s, 3.0), torch.tensor([0.0, 0.5, 0.75, 1.0]))
    grid = torch.linspace(0, 1, 101)
    shifted = flow.shift_sigmas(grid, 3.0)
    assert (shifted.diff() > 0).all()
    assert (shifted[1:-1] > grid[1:-1]).all()  # shift > 1 moves every inner level towards noise
    with pytest.raises(ValueError, match="positive"):
        flow.shift_sigmas(grid, 0.0)


def test_sample_sigmas_applies_the_shift_to_the_same_draws():
    plain = flow.sample_sigmas(8, gen(6), "logit_normal")
    torch.testing.assert_close(flow.sample_sigmas(8, gen(6), "logit_normal", shift=3.0), 3 * plain / (1 + 2 * plain))


def test_scheduler_shift_fixed_and_override():
    assert flow.scheduler_shift({"shift": 3.0}) == 3.0
    assert flow.scheduler_shift({"shift": 3.0}, flow_shift=1.5) == 1.5
    assert flow.scheduler_shift({}) == 1.0


def test_flux_resolution_shift_by_hand():
    from sd_lora.models.tiny_transformers import FLUX_SCHEDULER_CONFIG as cfg

    # mu runs linearly from 0.5 at 256 tokens (256 px) to 1.15 at 4096 tokens (1024 px); shift = exp(mu)
    assert flow.scheduler_shift(cfg, 256) == pytest.approx(math.exp(0.5))
    assert flow.scheduler_shift(cfg, flow.flux_image_seq_len(128, 128)) == pytest.approx(math.exp(1.15))
    at_512px = math.exp(0.5 + 0.65 * 768 / 3840)
    assert flow.scheduler_shift(cfg, flow.flux_image_seq_len(64, 64)) == pytest.approx(at_512px)
    assert flow.scheduler_shift(cfg, 1024, flow_shift=2.0) == 2.0
    with pytest.raises(ValueError, match="image_seq_len"):
        flow.scheduler_shift(cfg)


def test_flux_resolution_shift_matches_the_schedulers_dynamic_shift():
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    from sd_lora.models.tiny_transformers import FLUX_SCHEDULER_CONFIG as cfg

    sched = FlowMatchEulerDiscreteScheduler(**cfg)
    grid = np.linspace(1.0, 1 / 20, 20)
    for seq_len in (64, 1024, 4096):
        sched.set_timesteps(sigmas=grid, mu=calculate_shift(seq_len))
        ours = flow.shift_sigmas(torch.from_numpy(grid).float(), flow.scheduler_shift(cfg, seq_len))
        torch.testing.assert_close(ours, sched.sigmas[:-1], rtol=1e-5, atol=1e-6)


def test_diffusers_training_draw_u_is_our_one_minus_u():
    # diffusers' SD3 script: sigma = scheduler.sigmas[int(u * 1000)] on its descending, shifted table
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    k = torch.arange(1000)  # the index a draw u = k / 1000 picks
    torch.testing.assert_close(flow.shift_sigmas(1 - k / 1000, 3.0), sched.sigmas[k])


# ---- inputs, targets, weights ----

def test_noisy_input_target_and_timesteps_by_hand():
    x0 = torch.full((2, 1, 2, 2), 2.0)
    noise = torch.full((2, 1, 2, 2), -1.0)
    sigmas = torch.tensor([0.25, 1.0])
    noisy = flow.noisy_input(x0, noise, sigmas)
    assert noisy[0].unique().tolist() == [0.75 * 2 + 0.25 * -1]
    assert noisy[1].unique().tolist() == [-1.0]
    assert flow.flow_target(x0, noise).unique().tolist() == [-3.0]
    assert flow.model_timesteps(sigmas).tolist() == [250.0, 1000.0]


def test_loss_weights_by_hand_and_as_diffusers():
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    s = torch.tensor([0.5, 0.25, 1.0])
    torch.testing.assert_close(flow.loss_weights(s, "none"), torch.ones(3))
    torch.testing.assert_close(flow.loss_weights(s, "sigma_sqrt"), torch.tensor([4.0, 16.0, 1.0]))
    cosmap = flow.loss_weights(s, "cosmap")
    assert cosmap[0].item() == pytest.approx(4 / math.pi)
    assert cosmap[2].item() == pytest.approx(2 / math.pi)
    for w in ("sigma_sqrt", "cosmap"):
        torch.testing.assert_close(flow.loss_weights(s, w), compute_loss_weighting_for_sd3(w, s))


def test_diffusers_weighting_scheme_names_weigh_the_loss_unless_a_weighting_is_given():
    assert flow.loss_weighting_for("cosmap", "none") == "cosmap"
    assert flow.loss_weighting_for("sigma_sqrt", "none") == "sigma_sqrt"
    assert flow.loss_weighting_for("logit_normal", "none") == "none"
    assert flow.loss_weighting_for("logit_normal", "cosmap") == "cosmap"
    assert flow.loss_weighting_for("uniform", "sigma_sqrt") == "sigma_sqrt"


def test_flow_batch_is_the_formulas_on_the_generators_draws():
    latents = torch.randn(3, 4, 6, 6, generator=gen(11))
    g = gen(12)
    sigmas = flow.sample_sigmas(3, g, "logit_normal", shift=3.0)
    noise = torch.randn(latents.shape, generator=g)
    b = flow.flow_batch(latents, gen(12), scheme="logit_normal", shift=3.0, weighting="cosmap")
    torch.testing.assert_close(b.sigmas, sigmas)
    torch.testing.assert_close(b.noisy, (1 - sigmas.view(-1, 1, 1, 1)) * latents + sigmas.view(-1, 1, 1, 1) * noise)
    torch.testing.assert_close(b.target, noise - latents)
    torch.testing.assert_close(b.timesteps, sigmas * 1000)
    torch.testing.assert_close(b.weights, 2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas**2)))


def test_flow_batch_keeps_the_latents_dtype():
    b = flow.flow_batch(torch.zeros(2, 4, 4, 4, dtype=torch.bfloat16), gen())
    assert b.noisy.dtype == b.target.dtype == torch.bfloat16
    assert b.weights.dtype == b.sigmas.dtype == torch.float32


def test_same_generator_state_gives_the_same_batches_resume_exactness():
    latents = torch.randn(2, 4, 8, 8, generator=gen(20))
    g = gen(21)
    run = [flow.flow_batch(latents, g, scheme="mode", shift=2.0) for _ in range(4)]
    g2 = gen(21)
    flow.flow_batch(latents, g2, scheme="mode", shift=2.0)
    flow.flow_batch(latents, g2, scheme="mode", shift=2.0)
    resumed = torch.Generator()
    resumed.set_state(g2.get_state().clone())  # what a checkpoint stores
    for expected in run[2:]:
        got = flow.flow_batch(latents, resumed, scheme="mode", shift=2.0)
        assert torch.equal(got.noisy, expected.noisy) and torch.equal(got.sigmas, expected.sigmas)
    assert not torch.equal(run[0].noisy, run[1].noisy)


# ---- FLUX packing, ids, guidance ----

def test_pack_by_hand_and_round_trip():
    latents = torch.randn(2, 16, 6, 4, generator=gen(30))
    packed = flow.pack_latents(latents)
    assert packed.shape == (2, 3 * 2, 64)
    # token (row i, column j) holds channel c's 2x2 patch at features c*4 + di*2 + dj
    i, j, c, di, dj = 2, 1, 5, 1, 0
    assert packed[1, i * 2 + j, c * 4 + di * 2 + dj] == latents[1, c, 2 * i + di, 2 * j + dj]
    assert torch.equal(flow.unpack_latents(packed, 6, 4), latents)
    with pytest.raises(ValueError, match="even"):
        flow.pack_latents(torch.zeros(1, 16, 5, 4))


def test_image_and_text_ids():
    ids = flow.latent_image_ids(6, 4)
    assert ids.shape == (6, 3)
    assert ids.tolist() == [[0, i, j] for i in range(3) for j in range(2)]
    assert torch.equal(flow.text_ids(7), torch.zeros(7, 3))


def test_guidance_input_as_fluxpipeline_makes_it():
    g = flow.guidance_input(3, 3.5)
    assert torch.equal(g, torch.full([1], 3.5, dtype=torch.float32).expand(3))
