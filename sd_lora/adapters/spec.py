"""What one component's adapter should be, independent of the method that builds it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sd_lora.adapters.targets import ResolvedTargets

__all__ = ["AdapterSpec"]


@dataclass(frozen=True)
class AdapterSpec:
    targets: ResolvedTargets
    rank: int
    alpha: float
    conv_rank: int
    conv_alpha: float
    dropout: float = 0.0
    dora: bool = False
    rslora: bool = False
    lokr_factor: int = -1
    ranks: dict = field(default_factory=dict)  # per-module rank (block dims), overriding rank / conv_rank
    alphas: dict = field(default_factory=dict)  # per-module alpha (block alphas)
    options: dict = field(default_factory=dict)  # the method's own keys (adalora's init_r, oft's block size, ...)

    def _pattern(self, given: dict, conv_value, default) -> dict:
        # peft matches pattern keys as regexes against module names; use the exact names, escaped.
        conv = set(self.targets.conv3x3)
        values = {n: given.get(n, conv_value if n in conv else default) for n in self.targets.names}
        return {re.escape(n): v for n, v in values.items() if v != default}

    def rank_pattern(self) -> dict:
        return self._pattern(self.ranks, self.conv_rank, self.rank)

    def alpha_pattern(self) -> dict:
        return self._pattern(self.alphas, self.conv_alpha, self.alpha)
