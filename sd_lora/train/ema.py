"""An exponential moving average of the trained adapter weights, kept in fp32 on the training device.

`update()` after each optimiser step: ema = decay * ema + (1 - decay) * weight. `applied()` swaps the EMA
weights into the model (for samples and the exported files) and back. Registered with accelerate, so a
resumable state carries it (`state_dict` / `load_state_dict`).
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["AdapterEMA", "rounded_to"]


class AdapterEMA:
    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.params, self.decay = list(params), decay
        self.shadow = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach().float(), 1 - self.decay)  # s + (1 - decay) * (p - s)

    @contextlib.contextmanager
    def applied(self):
        """The model holds the EMA weights inside the block, its trained weights again after it."""
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, w in zip(self.params, saved):
                    p.copy_(w)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": [s.cpu() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        self.shadow = [s.to(p.device, torch.float32) for s, p in zip(state["shadow"], self.params)]


@contextlib.contextmanager
def rounded_to(params: list[torch.nn.Parameter], dtype: torch.dtype):
    """The parameters hold their values rounded to `dtype` (the saved file's precision) inside the block."""
    if all(p.dtype == dtype for p in params):
        yield
        return
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.copy_(p.to(dtype))
    try:
        yield
    finally:
        with torch.no_grad():
            for p, w in zip(params, saved):
                p.copy_(w)
