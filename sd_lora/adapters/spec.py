"""What one component's adapter should be, independent of the method that builds it."""

from __future__ import annotations

import re
from dataclasses import dataclass

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

    def _conv_pattern(self, conv_value, default) -> dict:
        # peft matches pattern keys as regexes against module names; use the exact names, escaped.
        if conv_value == default:
            return {}
        return {re.escape(n): conv_value for n in self.targets.conv3x3}

    def rank_pattern(self) -> dict:
        return self._conv_pattern(self.conv_rank, self.rank)

    def alpha_pattern(self) -> dict:
        return self._conv_pattern(self.conv_alpha, self.alpha)
