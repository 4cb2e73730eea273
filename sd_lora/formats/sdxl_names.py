"""diffusers UNet module paths <-> the original (SGM / LDM) block layout community SDXL files use.

The SGM layout numbers every block of the UNet in one flat list (`input_blocks.N.M`, `middle_block.N`,
`output_blocks.N.M`), so the index of a block depends on how many layers each diffusers block has.
Everything here is computed from the UNet config (`layers_per_block`, block types), never from a table
of names, so tiny test UNets map exactly like the full-size one.
"""

from __future__ import annotations

__all__ = ["NoSuchBlock", "diffusers_to_sgm", "sgm_to_diffusers"]

# ResNet sub-modules: diffusers name -> SGM name (in_layers = [norm, act, conv], out_layers = [norm, act, drop, conv]).
_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_RESNET_BACK = {v: k for k, v in _RESNET.items()}

# Modules outside the block lists.
_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_TOP_BACK = {v: k for k, v in _TOP.items()}


def _cfg(unet_config, key, default=None):
    return unet_config.get(key, default) if isinstance(unet_config, dict) else getattr(unet_config, key, default)


def _layers(unet_config, n_blocks: int, up: bool) -> list[int]:
    """Resnets per block: `layers_per_block` down, one more per up block (it also takes the skip of the sampler)."""
    lpb = _cfg(unet_config, "layers_per_block", 2)
    per_block = list(lpb) if isinstance(lpb, (list, tuple)) else [lpb] * n_blocks
    return [n + 1 for n in reversed(per_block)] if up else per_block


def _blocks(unet_config, up: bool) -> list[tuple[int, int, bool]]:
    """(first flat index, resnets, has attention) per diffusers block, in flat order."""
    types = list(_cfg(unet_config, "up_block_types" if up else "down_block_types"))
    layers = _layers(unet_config, len(types), up)
    out, start = [], 0 if up else 1
    for block_type, n in zip(types, layers):
        out.append((start, n, "CrossAttn" in block_type))
        # a down block's sampler takes one flat slot of its own; an up block's sampler shares the last slot
        start += n + (0 if up else 1)
    return out


def _mid_has_attention(unet_config) -> bool:
    return _cfg(unet_config, "mid_block_type", "UNetMidBlock2DCrossAttn") != "UNetMidBlock2D"


def _resnet_rest(rest: str, back: bool) -> str:
    table = _RESNET_BACK if back else _RESNET
    for src, dst in table.items():
        if rest == src or rest.startswith(src + "."):
            return dst + rest[len(src):]
    return rest


def _swap_head(rest: str, old: str, new: str) -> str:
    # the down-sampler conv is `conv` in diffusers and `op` in SGM
    if rest == old or rest.startswith(old + "."):
        return new + rest[len(old):]
    return rest


def _split(path: str, n: int) -> list[str]:
    parts = path.split(".", n)
    if len(parts) <= n:
        raise KeyError(path)
    return parts


class NoSuchBlock(KeyError):
    """A module path that does not exist in this UNet's block layout; the message names it."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _missing(path: str, unet_config) -> NoSuchBlock:
    down = len(list(_cfg(unet_config, "down_block_types", ()) or ()))
    return NoSuchBlock(f"{path}: no such module in this UNet ({down} down blocks, layers_per_block "
                       f"{_cfg(unet_config, 'layers_per_block', 2)}); the file was made for a UNet with other blocks")


def diffusers_to_sgm(path: str, unet_config) -> str:
    """`down_blocks.1.resnets.0.conv1` -> `input_blocks.4.0.in_layers.2` (raises KeyError, a NoSuchBlock
    naming the path, if it is not a path of this UNet)."""
    for src, dst in _TOP.items():
        if path == src or path.startswith(src + "."):
            return dst + path[len(src):]
    head = path.split(".", 1)[0]
    if head == "mid_block":
        _, kind, j, rest = _split(path, 3)
        if kind == "attentions" and j == "0" and _mid_has_attention(unet_config):
            return f"middle_block.1.{rest}"
        if kind == "resnets" and j in ("0", "1"):
            slot = int(j) * (2 if _mid_has_attention(unet_config) else 1)
            return f"middle_block.{slot}.{_resnet_rest(rest, back=False)}"
        raise _missing(path, unet_config)
    if head not in ("down_blocks", "up_blocks"):
        raise _missing(path, unet_config)
    up = head == "up_blocks"
    _, i, kind, j, rest = _split(path, 4)
    blocks = _blocks(unet_config, up)
    i, j = int(i), int(j)
    if i >= len(blocks):
        raise _missing(path, unet_config)
    start, n, has_attn = blocks[i]
    name = "output_blocks" if up else "input_blocks"
    if kind in ("resnets", "attentions") and j < n and (kind == "resnets" or has_attn):
        if kind == "resnets":
            return f"{name}.{start + j}.0.{_resnet_rest(rest, back=False)}"
        return f"{name}.{start + j}.1.{rest}"
    if not up and kind == "downsamplers" and j == 0 and i < len(blocks) - 1:
        return f"input_blocks.{start + n}.0.{_swap_head(rest, 'conv', 'op')}"
    if up and kind == "upsamplers" and j == 0 and i < len(blocks) - 1:
        return f"output_blocks.{start + n - 1}.{2 if has_attn else 1}.{rest}"
    raise _missing(path, unet_config)


def sgm_to_diffusers(path: str, unet_config) -> str:
    """Inverse of `diffusers_to_sgm` (raises KeyError for paths that do not exist in this UNet)."""
    for src, dst in _TOP_BACK.items():
        if path == src or path.startswith(src + "."):
            return dst + path[len(src):]
    head = path.split(".", 1)[0]
    if head == "middle_block":
        _, slot, rest = _split(path, 2)
        attn = _mid_has_attention(unet_config)
        if attn and slot == "1":
            return f"mid_block.attentions.0.{rest}"
        resnet = {"0": 0, "2" if attn else "1": 1}.get(slot)
        if resnet is None:
            raise _missing(path, unet_config)
        return f"mid_block.resnets.{resnet}.{_resnet_rest(rest, back=True)}"
    if head not in ("input_blocks", "output_blocks"):
        raise _missing(path, unet_config)
    up = head == "output_blocks"
    _, flat, inner, rest = _split(path, 3)
    flat, inner = int(flat), int(inner)
    for i, (start, n, has_attn) in enumerate(_blocks(unet_config, up)):
        j = flat - start
        last = i == len(_blocks(unet_config, up)) - 1
        prefix = f"{'up' if up else 'down'}_blocks.{i}"
        if 0 <= j < n:
            if inner == 0:
                return f"{prefix}.resnets.{j}.{_resnet_rest(rest, back=True)}"
            if inner == 1 and has_attn:
                return f"{prefix}.attentions.{j}.{rest}"
            if up and not last and j == n - 1 and inner == (2 if has_attn else 1):
                return f"{prefix}.upsamplers.0.{rest}"
            raise _missing(path, unet_config)
        if not up and not last and j == n and inner == 0:
            return f"{prefix}.downsamplers.0.{_swap_head(rest, 'op', 'conv')}"
    raise _missing(path, unet_config)
