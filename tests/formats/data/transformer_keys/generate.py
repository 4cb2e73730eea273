"""Write the original-layout weight lists (name -> shape) of full-size SD3.5 Medium, SD3.5 Large and FLUX.1-dev.

Run: PYTHONPATH=. python tests/formats/data/transformer_keys/generate.py  (see PROVENANCE.md). Not sd-lora code:
the names come from diffusers' own single-file converters, which turn an original SAI / BFL checkpoint into
diffusers' layout; each converter is fed a recording checkpoint whose every tensor carries its own key's number,
so each diffusers weight tells which original key it was cut from. Shapes are the diffusers modules' shapes on
the meta device, concatenated along the rows in the converter's order.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
from diffusers.loaders.single_file_utils import (
    convert_flux_transformer_checkpoint_to_diffusers,
    convert_sd3_transformer_checkpoint_to_diffusers,
)

HERE = Path(__file__).parent
_LONGEST = 21504  # FLUX linear1 rows: the converter splits a tensor of this length


class _Recorder(dict):
    """A checkpoint that hands out, for any popped key, a tensor holding that key's number."""

    def __init__(self, hints: dict):
        super().__init__(hints)
        self.popped: list[str] = []

    def pop(self, key, *default):
        self.popped.append(key)
        return torch.full((_LONGEST,), len(self.popped) - 1, dtype=torch.int32)


def _original_weights(model, converter, hints) -> tuple[dict[str, list[int]], dict[str, int]]:
    checkpoint = _Recorder(hints)
    converted = converter(checkpoint)
    modules = dict(model.named_modules())
    rows: dict[str, list[str]] = {}
    for key, tensor in converted.items():
        if not key.endswith(".weight"):
            continue
        module = modules.get(key[: -len(".weight")])
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        rows.setdefault(checkpoint.popped[int(tensor[0])], []).append(key[: -len(".weight")])
    out, blocks = {}, {}
    for original, parts in rows.items():
        shapes = [tuple(modules[p].weight.shape) for p in parts]
        out[original] = [sum(s[0] for s in shapes), *shapes[0][1:]]
        if len(parts) > 1:
            blocks[original] = len(parts)
    return dict(sorted(out.items())), dict(sorted(blocks.items()))


def _sd3_hints(layers: int, dual: tuple[int, ...], caption_dim: int) -> dict:
    hints = {f"joint_blocks.{i}.x_block.attn.ln_q.weight": None for i in range(layers)}
    hints.update({f"joint_blocks.{i}.x_block.attn2.qkv.weight": None for i in dual})
    hints["context_embedder.weight"] = torch.empty(caption_dim, 1, device="meta")
    return hints


SD3_COMMON = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, attention_head_dim=64,
                  joint_attention_dim=4096, pooled_projection_dim=2048, pos_embed_max_size=384, qk_norm="rms_norm")
MODELS = {
    "sd35_medium": (SD3Transformer2DModel, dict(SD3_COMMON, num_layers=24, num_attention_heads=24,
                                                caption_projection_dim=1536, dual_attention_layers=tuple(range(13))),
                    convert_sd3_transformer_checkpoint_to_diffusers, _sd3_hints(24, tuple(range(13)), 1536)),
    "sd35_large": (SD3Transformer2DModel, dict(SD3_COMMON, num_layers=38, num_attention_heads=38,
                                               caption_projection_dim=2432),
                   convert_sd3_transformer_checkpoint_to_diffusers, _sd3_hints(38, (), 2432)),
    "flux1_dev": (FluxTransformer2DModel, dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                                               attention_head_dim=128, num_attention_heads=24,
                                               joint_attention_dim=4096, pooled_projection_dim=768,
                                               guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
                  convert_flux_transformer_checkpoint_to_diffusers,
                  {**{f"double_blocks.{i}.x": None for i in range(19)},
                   **{f"single_blocks.{i}.x": None for i in range(38)}, "guidance_in.x": None}),
}


def main() -> None:
    for name, (cls, config, converter, hints) in MODELS.items():
        with torch.device("meta"):
            model = cls(**config)
        weights, blocks = _original_weights(model, converter, hints)
        text = json.dumps({"config": config, "weights": weights, "row_blocks": blocks}, indent=1)
        (HERE / f"{name}.json").write_text(text + "\n")
        print(name, len(weights), "weights")


if __name__ == "__main__":
    main()
