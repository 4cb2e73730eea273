"""`train.mixed_precision = "auto"`: the cheapest arithmetic the hardware runs natively, chosen before the
Accelerator is built.

bf16 where it is native (CUDA compute capability >= 8.0; x86 CPUs with AMX-BF16 or AVX-512 BF16, read from the
CPU's feature flags, never guessed from a model name), fp16 with accelerate's loss scaler on older GPUs (their
bf16 is emulated and slow), fp32 everywhere else. Only the frozen base and the autocast region change dtype; the
adapter weights and the optimiser stay fp32, so what is learned is the fp32 run's within bf16 rounding
(tests/train/test_precision.py measures the band).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PrecisionChoice", "choose_precision", "cpu_bf16_features", "resolve_precision", "with_resolved_precision"]

_CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo names (Linux); either runs bf16 dot products natively


@dataclass(frozen=True)
class PrecisionChoice:
    mode: str  # "no" (fp32), "fp16" or "bf16": what accelerate and the frozen weights use
    reason: str

    def describe(self, requested: str) -> str:
        name = {"no": "fp32", "fp16": "fp16 (loss scaling)", "bf16": "bf16"}[self.mode]
        how = "auto" if requested == "auto" else "set in the config"
        return f"precision: {name} frozen base, fp32 adapters [{how}: {self.reason}]"


def cpu_bf16_features(cpuinfo: str | None = None, capability: str | None = None) -> list[str]:
    """The native-bf16 features of this CPU: the /proc/cpuinfo flags above, and torch's own dispatch level
    ('AVX512_BF16' / 'AMX' from torch.backends.cpu.get_cpu_capability) where /proc is not readable."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags") and ":" in line:
            flags.update(line.split(":", 1)[1].split())
    found = [f for f in _CPU_BF16_FLAGS if f in flags]
    if capability is None:
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
    if not found and capability.upper() in ("AVX512_BF16", "AMX"):
        found.append(capability.lower())
    return found


def choose_precision(device_type: str, cuda_capability: tuple[int, int] | None = None,
                     cpu_features: list[str] | None = None, cpu_capability: str = "") -> PrecisionChoice:
    """The auto choice for a device, from explicit hardware facts (so every branch is testable anywhere)."""
    if device_type == "cuda" and cuda_capability is not None:
        cc = f"compute capability {cuda_capability[0]}.{cuda_capability[1]}"
        if cuda_capability >= (8, 0):
            return PrecisionChoice("bf16", f"{cc} runs bf16 natively")
        if cuda_capability >= (7, 0):
            return PrecisionChoice("fp16", f"{cc} has fp16 tensor cores but no native bf16")
        return PrecisionChoice("no", f"{cc} has no fast half-precision arithmetic")
    if device_type == "cpu":
        if cpu_features:
            return PrecisionChoice("bf16", f"the CPU has {' and '.join(cpu_features)}")
        seen = f" (torch dispatches {cpu_capability})" if cpu_capability else ""
        return PrecisionChoice("no", f"the CPU has neither AMX-BF16 nor AVX-512 BF16{seen}; bf16 would be emulated")
    return PrecisionChoice("no", f"{device_type} device: fp32 is the safe choice")


def _training_device_type(force_cpu: bool) -> str:
    import torch

    # accelerate picks CUDA when it is there and the run is not forced onto the CPU
    return "cuda" if torch.cuda.is_available() and not force_cpu else "cpu"


def resolve_precision(requested: str, force_cpu: bool = False) -> PrecisionChoice:
    """What `requested` ("auto", "no", "fp16", "bf16") means on this machine, with the reason."""
    import torch

    device = _training_device_type(force_cpu)
    if requested != "auto":
        return PrecisionChoice(requested, "fp32 everywhere" if requested == "no" else "as configured")
    if device == "cuda":
        return choose_precision("cuda", torch.cuda.get_device_capability())
    return choose_precision("cpu", cpu_features=cpu_bf16_features(),
                            cpu_capability=torch.backends.cpu.get_cpu_capability())


def with_resolved_precision(cfg, force_cpu: bool = False):
    """`cfg` with train.mixed_precision made concrete (the saved config and metadata say what ran), and the
    plan's line about it."""
    t = cfg.train
    choice = resolve_precision(t.mixed_precision, force_cpu)
    line = choice.describe(t.mixed_precision)
    if choice.mode == t.mixed_precision:
        return cfg, line
    out = dataclasses.replace(cfg, train=dataclasses.replace(t, mixed_precision=choice.mode))
    if hasattr(cfg, "given"):  # which keys the user set (later defaults must not override them)
        out.given = cfg.given
    return out, line
