"""Block-wise ranks, alphas and learning rates (network.block_dims / block_alphas / block_lr_weights).

The index of a module comes from its family (`Family.block_index`): kohya's 25 UNet blocks for SD1/SD2/SDXL
(sd_lora.models.families.unet_blocks), the joint-block index for SD3.
"""

from __future__ import annotations

from typing import Callable

from sd_lora.models.families.unet_blocks import BLOCK_NAMES, NUM_BLOCKS, block_index

__all__ = ["NUM_BLOCKS", "BLOCK_NAMES", "block_index", "block_value", "block_targets"]

BlockIndex = Callable[[str], "int | None"]


def block_value(values: list | None, module_name: str, index_of: BlockIndex, default):
    """values[index_of(name)], or `default` without values or outside the blocks."""
    index = index_of(module_name)
    return default if values is None or index is None or index >= len(values) else values[index]


def block_targets(network, targets, index_of: BlockIndex, conv_rank: int, conv_alpha: float):
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
            rank = block_value(n.conv_block_dims, name, index_of, conv_rank)
            if n.conv_block_dims is None and block_value(n.block_dims, name, index_of, 1) == 0:
                rank = 0
            alpha = block_value(n.conv_block_alphas, name, index_of, conv_alpha)
        else:
            rank = block_value(n.block_dims, name, index_of, n.rank)
            alpha = block_value(n.block_alphas, name, index_of, n.alpha)
        ranks[name], alphas[name] = int(rank), float(alpha)
    kept = [name for name in targets.names if ranks[name] > 0]
    if not kept:
        raise SdLoraError("network.block_dims: every targeted denoiser module is in a block with dim 0; give at least "
                          "one block a rank")
    return (ResolvedTargets(kept, [c for c in targets.conv3x3 if ranks[c] > 0]),
            {k: ranks[k] for k in kept}, {k: alphas[k] for k in kept})
