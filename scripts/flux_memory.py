"""FLUX.1 memory: analytic weight bytes per storage option and block swapping, and a measurement on this CPU.

    python scripts/flux_memory.py               # (a) the analytic tables (meta device, seconds)
    flock /tmp/heavy.lock python scripts/flux_memory.py --measure   # (b) + the measurement (needs 18 GiB free)
    flock /tmp/heavy.lock python scripts/flux_memory.py --measure --blocks-only   # (b) without the full build

(a) builds the full-size FLUX.1 transformer (and T5-XXL, CLIP-L) on the meta device and counts bytes: bf16,
fp8 (frozen Linear weights 1 byte, the rest bf16, as sd_lora.models.fp8 stores them) and nf4 (bitsandbytes
Linear4bit: 4-bit codes, one fp32 absmax per 64 weights; with double quantisation the absmax is 8-bit plus one
fp32 per 256 absmax), with the last N blocks swapped to CPU memory (sd_lora.train.block_swap: two swapped
blocks on the device at once).
(b) materialises the full transformer with random weights directly in float8, layer by layer (never a bf16
copy of the model), adds LoRA rank 16 on the attention projections, and measures peak RSS: after building,
and over a 512 px forward + backward (1024 image + 512 text tokens, batch 1) of one double-stream and one
single-stream block (each built alone, fp8 storage, computed in fp32: see COMPUTE); then the same block's
output with fp8 against a bf16 build of that block (same random values before rounding). The whole 57-block
step is not run here: its time on this 2-core CPU is printed.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))
ATTENTION = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
GIB = 2**30
NF4 = 0.5 + 4 / 64  # bytes per Linear weight: 4-bit code + fp32 absmax per 64-weight block
NF4_DQ = 0.5 + 1 / 64 + 4 / (64 * 256)  # double quantisation: 8-bit absmax + fp32 per 256 absmax
# Compute dtype of the measurement: this CPU (AVX2, no AVX-512 BF16/AMX) multiplies bf16 matrices at 0.4
# GFLOP/s against 75 in fp32 (1536x3072 @ 3072x3072, one core), so the blocks run in fp32 here; a GPU runs bf16.
COMPUTE = torch.float32
OPTIONS = {"bf16": None, "fp8": 1.0, "nf4": NF4, "nf4+dq": NF4_DQ}


def _meta_flux():
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        return FluxTransformer2DModel(**FLUX_DEV)


def _bytes(module: nn.Module, option: str) -> float:
    """Bytes of `module`'s parameters and buffers stored the `option` way (non-Linear tensors in bf16)."""
    linear = {id(m.weight) for m in module.modules() if type(m) is nn.Linear}
    per_linear = OPTIONS[option]
    total = 0.0
    for t in (*module.parameters(), *module.buffers()):
        total += t.numel() * (per_linear if per_linear is not None and id(t) in linear else 2)
    return total


def _lora_params(module: nn.Module, rank: int = 16) -> int:
    return sum(rank * (m.in_features + m.out_features) for name, m in module.named_modules()
               if type(m) is nn.Linear and any(name.endswith(t) for t in ATTENTION))


def _text_encoders():
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    t5 = T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                  feed_forward_proj="gated-gelu", is_encoder_decoder=False)
    clip = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                          num_attention_heads=12, max_position_embeddings=77)
    with torch.device("meta"):
        return {"T5-XXL encoder": T5EncoderModel(t5), "CLIP-L text": CLIPTextModel(clip)}


def analytic() -> None:
    model = _meta_flux()
    blocks = [*model.transformer_blocks, *model.single_transformer_blocks]
    params = sum(p.numel() for p in model.parameters())
    print(f"FLUX.1 transformer: {params / 1e9:.3f} B parameters; double block "
          f"{sum(p.numel() for p in blocks[0].parameters()) / 1e6:.0f} M, single block "
          f"{sum(p.numel() for p in blocks[-1].parameters()) / 1e6:.0f} M")
    for name, enc in _text_encoders().items():
        n = sum(p.numel() for p in enc.parameters())
        print(f"{name}: {n / 1e9:.3f} B parameters, bf16 {_bytes(enc, 'bf16') / GIB:.2f} GiB, "
              f"fp8 {_bytes(enc, 'fp8') / GIB:.2f} GiB, nf4 {_bytes(enc, 'nf4') / GIB:.2f} GiB")
    lora = _lora_params(model)
    adapter = lora * 16  # fp32 weights, grads and two AdamW moments
    print(f"LoRA rank 16 on the attention projections: {lora / 1e6:.1f} M parameters, "
          f"{adapter / GIB:.2f} GiB with grads and AdamW state (fp32)\n")
    print("Transformer weights on the GPU, GiB. Swapped: the last N single blocks (the end of the execution order), "
          "or the last N double blocks (a second BlockSwapper over transformer_blocks); two swapped blocks of a "
          "list are resident at a time:\n")
    print("| storage | no swap | 8 single | 18 single | 28 single | 8 double | 18 double | CPU RAM, 18 double |")
    print("|---|---|---|---|---|---|---|---|")
    for option in OPTIONS:
        row = [_on_device(model, option, singles=n) for n in (0, 8, 18, 28)]
        row += [_on_device(model, option, doubles=n) for n in (8, 18)]
        cpu = sum(_bytes(b, option) for b in model.transformer_blocks[-18:])
        print(f"| {option} | " + " | ".join(f"{b / GIB:.2f}" for b in row) + f" | {cpu / GIB:.2f} |")
    print()
    _fits(model, adapter)


def _on_device(model, option: str, singles: int = 0, doubles: int = 0) -> float:
    total = _bytes(model, option)
    for blocks, n in ((model.single_transformer_blocks, singles), (model.transformer_blocks, doubles)):
        swapped = [_bytes(b, option) for b in list(blocks)[len(blocks) - n:]]
        total += sum(sorted(swapped)[-2:]) - sum(swapped)
    return total


def _fits(model, adapter) -> None:
    # A "12 GB" card has 12 GiB. Reserved: the adapter's fp32 weights, grads and AdamW moments and ~0.6 GiB
    # for the CUDA context and kernels (an assumption: it varies with the driver and torch build).
    print("GiB of the card left for activations after the transformer weights, the adapter's training state and "
          "~0.6 GiB of CUDA context (text encoders cached and dropped):\n")
    print("| storage, blocks swapped | 12 GiB card | 16 GiB card | 24 GiB card |")
    print("|---|---|---|---|")
    for option in OPTIONS:
        for label, kwargs in (("none", {}), ("18 single", {"singles": 18}), ("18 double", {"doubles": 18}),
                              ("18 double + 28 single", {"doubles": 18, "singles": 28})):
            weights = _on_device(model, option, **kwargs)
            cells = [gib - (weights + adapter) / GIB - 0.6 for gib in (12, 16, 24)]
            print(f"| {option}, {label} | " + " | ".join(f"{c:.1f}" if c > 0 else f"**{c:.1f}**" for c in cells)
                  + " |")
    print()


def _available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def _rss_gib() -> tuple[float, float]:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(status["VmRSS"].split()[0]) / 2**20, int(status["VmHWM"].split()[0]) / 2**20


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def _random(shape, generator, dtype) -> torch.Tensor:
    return (torch.randn(shape, generator=generator, dtype=torch.float32) * 0.02).to(dtype)


def _materialise(module: nn.Module, seed: int, linear_dtype: torch.dtype) -> None:
    """Replace `module`'s meta tensors by random ones, one tensor at a time: Linear weights straight into
    `linear_dtype`, norm scales 1, biases 0, the rest (small) in COMPUTE. The same seed gives the same values
    before rounding."""
    generator = torch.Generator().manual_seed(seed)
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is None or p.device.type != "meta":
                continue
            if type(sub) is nn.Linear and name == "weight":
                value = _random(p.shape, generator, linear_dtype)
            elif name == "bias":
                value = torch.zeros(p.shape, dtype=COMPUTE)
            elif "norm" in type(sub).__name__.lower():
                value = torch.ones(p.shape, dtype=COMPUTE)
            else:
                value = _random(p.shape, generator, COMPUTE)
            sub._parameters[name] = nn.Parameter(value, requires_grad=False)
        for name, b in list(sub._buffers.items()):
            if b is not None and b.device.type == "meta":
                sub._buffers[name] = torch.zeros(b.shape, dtype=b.dtype)


def _block_inputs(generator):
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed

    img, txt, dim = 1024, 512, 3072  # 512 px: 64x64 latents packed 2x2 -> 32x32 tokens; T5 max length 512
    ids = torch.cat([torch.zeros(txt, 3), torch.stack(torch.meshgrid(
        torch.zeros(1), torch.arange(32.0), torch.arange(32.0), indexing="ij"), -1).reshape(-1, 3)])
    rope = FluxPosEmbed(theta=10000, axes_dim=list(FLUX_DEV["axes_dims_rope"]))(ids)
    # both block kinds take the two streams; the inputs carry gradients as in a block behind adapted ones
    return dict(hidden_states=(_random((1, img, dim), generator, COMPUTE) * 50).requires_grad_(),
                encoder_hidden_states=(_random((1, txt, dim), generator, COMPUTE) * 50).requires_grad_(),
                temb=_random((1, dim), generator, COMPUTE) * 50, image_rotary_emb=rope)


def _block_step(block: nn.Module, backward: bool = True):
    inputs = _block_inputs(torch.Generator().manual_seed(7))
    start = time.perf_counter()
    with torch.set_grad_enabled(backward):
        out = block(**inputs)
        out = torch.cat([o.flatten() for o in (out if isinstance(out, tuple) else (out,))])
        if backward:
            out.square().mean().backward()
    return out.detach(), time.perf_counter() - start


def _block(double: bool, linear_dtype: torch.dtype, storage: str | None, lora: bool) -> nn.Module:
    """The first double or single block of the full-size model, its Linear weights drawn into `linear_dtype`
    (the same values before rounding whatever the dtype) and stored as `storage`, optionally with LoRA."""
    from peft import LoraConfig, inject_adapter_in_model

    from sd_lora.models.fp8 import apply_weight_storage

    model = _meta_flux()
    name = "transformer_blocks" if double else "single_transformer_blocks"
    block = getattr(model, name)[0]
    _materialise(block, 1000 * _child_index(model, name), linear_dtype)
    block.requires_grad_(False)
    if storage:
        apply_weight_storage(block, storage, COMPUTE)
    if lora:
        inject_adapter_in_model(LoraConfig(r=16, lora_alpha=16, target_modules=ATTENTION), block)
    return block


def _build_fp8_transformer():
    from peft import LoraConfig, inject_adapter_in_model

    from sd_lora.models.fp8 import apply_weight_storage

    model = _meta_flux()
    for i, (name, sub) in enumerate(model.named_children()):
        for j, part in enumerate(sub if isinstance(sub, nn.ModuleList) else [sub]):
            _materialise(part, 1000 * i + j, torch.float8_e4m3fn)
    model.requires_grad_(False)
    report = apply_weight_storage(model, "fp8_e4m3fn", COMPUTE)
    inject_adapter_in_model(LoraConfig(r=16, lora_alpha=16, target_modules=ATTENTION), model)
    return model, report


def measure(blocks_only: bool) -> None:
    free = _available_gib()
    print(f"MemAvailable {free:.1f} GiB")
    if free < (6 if blocks_only else 18):
        print("not measured: too little memory available (the fp8 transformer alone takes ~11 GiB plus the steps)")
        return
    torch.set_num_threads(2)
    rss0, _ = _rss_gib()
    if not blocks_only:
        _reset_peak()
        start = time.perf_counter()
        model, report = _build_fp8_transformer()
        gc.collect()
        rss, peak = _rss_gib()
        print(f"built the transformer in {time.perf_counter() - start:.0f} s, materialised in fp8 one layer at a "
              f"time ({report.layers} Linear layers): RSS {rss - rss0:.2f} GiB above the interpreter, peak "
              f"{peak - rss0:.2f} GiB")
        del model
        gc.collect()
    rows = {}
    for double in (True, False):
        kind = "double" if double else "single"
        block = _block(double, torch.float8_e4m3fn, "fp8_e4m3fn", lora=True)
        gc.collect()
        _reset_peak()
        before, _ = _rss_gib()
        out8, seconds = _block_step(block)
        _, peak = _rss_gib()
        rows[kind] = (peak - before, seconds)
        print(f"{kind} block, 512 px forward+backward (fp8 storage, {str(COMPUTE)[6:]} compute, LoRA r16): "
              f"+{peak - before:.2f} GiB peak RSS over the built block, {seconds:.1f} s")
        del block
        outs = {}
        for label, dtype, storage in (("bf16", torch.bfloat16, "bf16"), ("fp32", torch.float32, None)):
            outs[label], _ = _block_step(_block(double, dtype, storage, lora=False), backward=False)
        err = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
        print(f"{kind} block output: fp8 vs bf16 weights relative L2 error {err(out8, outs['bf16']):.4f} "
              f"(bf16 vs fp32 weights: {err(outs['bf16'], outs['fp32']):.4f})")
    inputs = _checkpoint_inputs_gib()
    print(f"\nestimate of a full 512 px step's peak with gradient checkpointing per block: the built transformer + "
          f"saved block inputs {inputs:.2f} GiB ({str(COMPUTE)[6:]}) + one block's recompute "
          f"(+{max(r[0] for r in rows.values()):.2f} GiB above); bf16 activations take half. Time on this CPU "
          f"without checkpointing ~{(19 * rows['double'][1] + 38 * rows['single'][1]) / 60:.0f} min (not run).")


def _child_index(model, name) -> int:
    return [n for n, _ in model.named_children()].index(name)


def _checkpoint_inputs_gib() -> float:
    # the inputs each checkpointed block keeps: 1024 image + 512 text tokens of width 3072
    return (19 + 38) * 1536 * 3072 * COMPUTE.itemsize / GIB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--measure", action="store_true", help="also build the fp8 transformer and measure RSS")
    parser.add_argument("--blocks-only", action="store_true",
                        help="with --measure: build only one double and one single block (minutes less)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, max RSS so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB\n")
    analytic()
    if args.measure:
        measure(args.blocks_only)


if __name__ == "__main__":
    main()
