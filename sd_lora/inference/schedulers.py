"""Schedulers by the names AUTOMATIC1111 users know ("Euler a", "DPM++ 2M Karras", ...)."""

from __future__ import annotations

from sd_lora.config.samplers import SCHEDULERS, canonical_scheduler
from sd_lora.errors import SdLoraError

__all__ = ["SCHEDULERS", "canonical_scheduler", "set_scheduler", "scheduler_name"]


def set_scheduler(pipeline, name: str, zero_terminal_snr: bool = False) -> str:
    """Replace the pipeline's scheduler with `name`, keeping the model's own settings (prediction type, betas).

    With `zero_terminal_snr` (an adapter trained with it) the betas are rescaled to zero SNR at the last step
    and the timesteps spaced "trailing" (Lin et al.), through diffusers' own `rescale_betas_zero_snr`; a
    scheduler without that option is an error naming those that have it.
    Returns the display name (recorded in PNG parameters)."""
    import inspect

    import diffusers

    display = canonical_scheduler(name)
    config = dict(pipeline.scheduler.config)
    if _is_flow(pipeline.scheduler):
        return _set_flow_scheduler(pipeline, display, config, zero_terminal_snr)
    class_name, extra = SCHEDULERS[display]
    cls = getattr(diffusers, class_name)
    if zero_terminal_snr:
        if "rescale_betas_zero_snr" not in inspect.signature(cls.__init__).parameters:
            able = [n for n, (c, _) in SCHEDULERS.items()
                    if "rescale_betas_zero_snr" in inspect.signature(getattr(diffusers, c).__init__).parameters]
            raise SdLoraError(f"scheduler {display!r} cannot use zero-terminal SNR (the adapter was trained with it); "
                              f"choose one of: {', '.join(able)}")
        extra = {**extra, "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
    pipeline.scheduler = cls.from_config(config, **extra)
    return display


# A flow-matching model (SD3, FLUX) samples its velocity with flow schedulers only; the A1111 names users give map
# onto them, and the model's own shift settings carry over through the config.
FLOW_SCHEDULERS: dict[str, tuple[str, dict]] = {
    "Euler": ("FlowMatchEulerDiscreteScheduler", {"stochastic_sampling": False}),
    "Euler a": ("FlowMatchEulerDiscreteScheduler", {"stochastic_sampling": True}),
    "Heun": ("FlowMatchHeunDiscreteScheduler", {}),
}


def _is_flow(scheduler) -> bool:
    return type(scheduler).__name__.startswith("FlowMatch")


def _set_flow_scheduler(pipeline, display: str, config: dict, zero_terminal_snr: bool) -> str:
    import diffusers

    if display not in FLOW_SCHEDULERS:
        raise SdLoraError(f"scheduler {display!r} is for noise-prediction models; this model is trained by flow "
                          f"matching and samples with: {', '.join(FLOW_SCHEDULERS)}")
    if zero_terminal_snr:
        raise SdLoraError("zero-terminal SNR does not apply to a flow-matching model (its schedule ends at pure noise)")
    class_name, extra = FLOW_SCHEDULERS[display]
    pipeline.scheduler = getattr(diffusers, class_name).from_config(config, **extra)
    return display


def scheduler_name(pipeline) -> str:
    """The display name of the pipeline's current scheduler (its class name when it is not one of ours)."""
    scheduler = pipeline.scheduler
    config = scheduler.config
    for display, (class_name, extra) in (FLOW_SCHEDULERS if _is_flow(scheduler) else SCHEDULERS).items():
        if type(scheduler).__name__ == class_name and all(config.get(k) == v for k, v in extra.items()):
            return display
    return type(scheduler).__name__
