"""Which float8 operations this torch build runs on the CPU, and how fast the per-layer cast is.

    python scripts/fp8_cpu_ops.py

sd_lora.models.fp8 needs only: casting to float8 (storage) and back to the compute dtype (each use), plus
clone/copy/cat for saving and loading; everything else runs on the cast copy. Prints a Markdown table.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

FP8 = (torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz)
COMPUTE = (torch.float32, torch.bfloat16, torch.float16)


def _try(fn) -> str:
    try:
        fn()
        return "yes"
    except Exception as e:  # the point is to list what fails, whatever it raises
        return f"no ({type(e).__name__}: {str(e).splitlines()[0][:70]})"


def main() -> None:
    x = torch.randn(64, 64) * 0.02
    print(f"torch {torch.__version__}\n")
    print("| float8 dtype | " + " | ".join(f"from {str(c)[6:]}" for c in COMPUTE) + " | "
          + " | ".join(f"to {str(c)[6:]}" for c in COMPUTE) + " |")
    print("|---" * (1 + 2 * len(COMPUTE)) + "|")
    for f8 in FP8:
        cells = [_try(lambda c=c: x.to(c).to(f8)) for c in COMPUTE]
        cells += [_try(lambda c=c: x.to(f8).to(c)) for c in COMPUTE]
        print(f"| {str(f8)[6:]} | " + " | ".join(cells) + " |")
    w8 = x.to(torch.float8_e4m3fn)
    ops = {
        "clone / copy_ / cat / view(uint8)": lambda: (w8.clone(), torch.empty_like(w8).copy_(x), torch.cat([w8, w8]),
                                                      w8.view(torch.uint8)),
        "abs, mul, eq": lambda: (w8.abs(), w8 * w8, w8 == w8),
        "add": lambda: w8 + w8,
        "matmul fp8 @ fp8": lambda: w8 @ w8,
        "F.linear(bf16 input, fp8 weight)": lambda: F.linear(torch.ones(2, 64, dtype=torch.bfloat16), w8),
        "same under torch.autocast('cpu', bfloat16)": lambda: _autocast_linear(w8),
        "torch._scaled_mm (CPU)": lambda: torch._scaled_mm(w8, w8.t(), scale_a=torch.tensor(1.0),
                                                          scale_b=torch.tensor(1.0), out_dtype=torch.bfloat16),
        "normal_ / uniform_ on a float8 tensor": lambda: torch.empty(4, dtype=torch.float8_e4m3fn).normal_(),
        "safetensors save + load": _safetensors_roundtrip,
    }
    print("\n| float8_e4m3fn op on the CPU | runs |\n|---|---|")
    for name, fn in ops.items():
        print(f"| {name} | {_try(fn)} |")
    big = torch.randn(3072, 3072)
    print(f"\nCast speed ({torch.get_num_threads()} thread(s)), a 3072x3072 weight (one FLUX attention projection):\n")
    print("| cast | ms |\n|---|---|")
    for name, src, dst in (("fp8_e4m3fn -> bf16", big.to(torch.float8_e4m3fn), torch.bfloat16),
                           ("fp8_e4m3fn -> fp32", big.to(torch.float8_e4m3fn), torch.float32),
                           ("bf16 -> fp8_e4m3fn", big.to(torch.bfloat16), torch.float8_e4m3fn)):
        src.to(dst)
        start = time.perf_counter()
        for _ in range(5):
            src.to(dst)
        print(f"| {name} | {(time.perf_counter() - start) / 5 * 1e3:.1f} |")


def _autocast_linear(w8):
    with torch.autocast("cpu", torch.bfloat16):
        return F.linear(torch.ones(2, 64), w8)


def _safetensors_roundtrip():
    from safetensors.torch import load, save

    x = torch.randn(8, 8).to(torch.float8_e4m3fn)
    assert torch.equal(load(save({"w": x}))["w"].view(torch.uint8), x.view(torch.uint8))


if __name__ == "__main__":
    main()
