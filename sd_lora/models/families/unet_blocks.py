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

__all__ = ["NUM_BLOCKS", "BLOCK_NAMES", "block_index"]

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
