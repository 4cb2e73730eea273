"""Settings the rectified-flow families (SD3, FLUX) refuse: noise-prediction options with no meaning for a flow."""

from __future__ import annotations

__all__ = ["REFUSED", "flow_problems"]

REFUSED = (  # (key, is it set?, why)
    ("train.min_snr_gamma", lambda t: bool(t.min_snr_gamma), "Min-SNR weighting is defined on a DDPM noise schedule"),
    ("train.zero_terminal_snr", lambda t: t.zero_terminal_snr, "a flow schedule already ends at pure noise"),
    ("train.noise_offset", lambda t: bool(t.noise_offset), "offset noise is an epsilon/v-prediction remedy"),
    ("train.debiased_estimation_loss", lambda t: t.debiased_estimation_loss, "it weighs by a DDPM SNR"),
    ("train.huber_schedule", lambda t: t.huber_schedule == "snr", "the 'snr' schedule needs a DDPM SNR"),
    ("train.min_timestep", lambda t: t.min_timestep != 0 or t.max_timestep != 1000,
     "timestep bounds count DDPM steps; flow timesteps are drawn by train.timestep_sampling"),
)


def flow_problems(title: str, cfg) -> list[str]:
    """What in `cfg` a flow-matching family titled `title` cannot use (each names the key and what to do)."""
    t = cfg.train
    problems = [f"{key}: not for {title} (rectified flow): {why}; leave it out" for key, is_set, why in REFUSED
                if is_set(t)]
    if cfg.model.prediction_type:
        problems.append(f"model.prediction_type: {title} predicts a flow velocity, not {cfg.model.prediction_type!r}; "
                        "leave model.prediction_type out")
    return problems
