"""Sampler (scheduler) names as AUTOMATIC1111 users know them ("Euler a", "DPM++ 2M Karras", ...): the table and
the spelling check the config validates with. Here, not in sd_lora.inference, so the config never imports a
layer above it; sd_lora.inference.schedulers builds the diffusers schedulers from this table."""

from __future__ import annotations

import re

from sd_lora.errors import SdLoraError

__all__ = ["SCHEDULERS", "canonical_scheduler"]

# display name -> (diffusers class name, extra config). Karras sigmas and the DPM variant are explicit in
# every entry so switching away from a Karras scheduler does not carry them over through the config.
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "Euler": ("EulerDiscreteScheduler", {"use_karras_sigmas": False}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {"use_karras_sigmas": False}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler",
                 {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler",
                        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler",
                     {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": False}),
    "DPM++ 2M SDE Karras": ("DPMSolverMultistepScheduler",
                            {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "DDIM": ("DDIMScheduler", {}),
    "DDPM": ("DDPMScheduler", {}),
    "PNDM": ("PNDMScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {"use_karras_sigmas": False}),
}


def _key(name: str) -> str:
    name = name.lower().replace("dpmpp", "dpm++")
    return re.sub(r"[\s_\-]+", " ", name).strip()


_BY_KEY = {_key(n): n for n in SCHEDULERS} | {"euler ancestral": "Euler a", "euler_a": "Euler a", "unipc": "UniPC"}


def canonical_scheduler(name: str) -> str:
    """The display name for `name` (case, `_`/`-` and `dpmpp` spellings accepted) or a clear error."""
    found = _BY_KEY.get(_key(name))
    if found is None:
        import difflib

        close = difflib.get_close_matches(_key(name), list(_BY_KEY), n=1, cutoff=0.6)
        hint = f" (did you mean {_BY_KEY[close[0]]!r}?)" if close else ""
        raise SdLoraError(f"scheduler {name!r} is unknown{hint}; choose one of: {', '.join(SCHEDULERS)}")
    return found
