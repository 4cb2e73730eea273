"""kohya's 25-block indexing of the UNet, for block-wise learning rates, ranks and alphas.

Index 0-11 are the original layout's `input_blocks.0-11` (IN00 = conv_in, never adapted), 12 is the
`middle_block` (MID), 13-24 are `output_blocks.0-11` (OUT00-OUT11). In diffusers terms, with L =
layers_per_block (2 for SD1/SD2/SDXL):

    down_blocks.i.{resnets,attentions}.j  -> IN(1 + i*(L+1) + j),   down_blocks.i.downsamplers -> IN(1 + i*(L+1) + L)
    mid_block                             -> MID (12)
    up_blocks.i.{resnets,attentions}.j    -> OUT(i*(L+1) + j),       up_blocks.i.upsamplers     -> OUT(i*(L+1) + L)

SD1/SD2: IN01-IN11, MID, OUT00-OUT11 are used. SDXL (3 levels): IN01-IN08, MID, OUT00-OUT08; its values at
IN09-IN11 and OUT09-OUT11 are ignored. Modules outside the blocks (time embedding, conv_in/out) have no
index and keep the network's defaults.
"""

from __future__ import annotations

import re

__all__ = ["NUM_BLOCKS", "BLOCK_NAMES", "block_index", "block_value", "block_targets"]

NUM_BLOCKS = 25
BLOCK_NAMES = [f"IN{i:02d}" for i in range(12)] + ["MID"] + [f"OUT{i:02d}" for i in range(12)]
_DOWN = re.compile(r"(?:^|\.)down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.")
_UP = re.compile(r"(?:^|\.)up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.")


def block_index(module_name: str, layers_per_block: int = 2) -> int | None:
    """kohya's block index (0-24) of a UNet module or parameter name, or None outside the blocks."""
    per = layers_per_block + 1
    if m := _DOWN.search(module_name + "."):
        i, kind, j = int(m[1]), m[2], int(m[3])
        return 1 + i * per + (layers_per_block if kind == "downsamplers" else j)
    if re.search(r"(?:^|\.)mid_block\.", module_name + "."):
        return 12
    if m := _UP.search(module_name + "."):
        i, kind, j = int(m[1]), m[2], int(m[3])
        return 13 + i * per + (layers_per_block if kind == "upsamplers" else j)
    return None


def block_value(values: list | None, module_name: str, layers_per_block: int, default):
    """values[block_index(name)], or `default` without values or outside the blocks."""
    index = block_index(module_name, layers_per_block)
    return default if values is None or index is None else values[index]


def block_targets(network, targets, layers_per_block: int, conv_rank: int, conv_alpha: float):
    """(targets without the modules of dim-0 blocks, {name: rank}, {name: alpha}) from network.block_dims /
    block_alphas / conv_block_dims / conv_block_alphas (3x3 convs follow block_dims' zeros when
    conv_block_dims is unset)."""
    from sd_lora.adapters.targets import ResolvedTargets
    from sd_lora.errors import SdLoraError

    n = network
    conv = set(targets.conv3x3)
    ranks, alphas = {}, {}
    for name in targets.names:
        if name in conv:
            rank = block_value(n.conv_block_dims, name, layers_per_block, conv_rank)
            if n.conv_block_dims is None and block_value(n.block_dims, name, layers_per_block, 1) == 0:
                rank = 0
            alpha = block_value(n.conv_block_alphas, name, layers_per_block, conv_alpha)
        else:
            rank = block_value(n.block_dims, name, layers_per_block, n.rank)
            alpha = block_value(n.block_alphas, name, layers_per_block, n.alpha)
        ranks[name], alphas[name] = int(rank), float(alpha)
    kept = [name for name in targets.names if ranks[name] > 0]
    if not kept:
        raise SdLoraError("network.block_dims: every targeted UNet module is in a block with dim 0; give at least "
                          "one block a rank")
    return (ResolvedTargets(kept, [c for c in targets.conv3x3 if ranks[c] > 0]),
            {k: ranks[k] for k in kept}, {k: alphas[k] for k in kept})
