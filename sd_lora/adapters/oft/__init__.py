"""OFT and BOFT (orthogonal fine-tuning: each module's weight is multiplied by a learned block-orthogonal matrix)
through peft's OFTConfig / BOFTConfig.

peft rotates a module's *input* features (W' = W Rᵀ); the exact Cayley transform is used (not peft's Neumann
series default; BOFT always uses it), so R is orthogonal. OFT refuses 3x3 convs: peft rotates their unfolded
input patches and folds them back, which no weight update reproduces (BOFT rotates conv weights, so it may).
"""

from __future__ import annotations

from sd_lora.adapters.spec import AdapterSpec
from sd_lora.errors import SdLoraError

__all__ = ["OPTIONS", "build_oft_config", "build_boft_config"]

OPTIONS = ("oft_block_size", "oft_blocks", "oft_constraint", "boft_butterfly_factor")


def _oft_targets(spec: AdapterSpec) -> list[str]:
    if spec.targets.conv3x3:
        raise SdLoraError(f"network.type = 'oft': peft's OFT on 3x3 convs (e.g. {spec.targets.conv3x3[0]}) computes "
                          "something no saved weight reproduces; use preset 'attn' or 'attn-mlp', or type 'boft'")
    return spec.targets.names


def build_oft_config(spec: AdapterSpec):
    from peft import OFTConfig

    o = spec.options
    return OFTConfig(r=o["oft_blocks"], oft_block_size=o["oft_block_size"], coft=o["oft_constraint"] > 0,
                     eps=o["oft_constraint"] or 6e-5, module_dropout=spec.dropout, target_modules=_oft_targets(spec),
                     use_cayley_neumann=False, init_weights=True)


def build_boft_config(spec: AdapterSpec):
    from peft import BOFTConfig

    o = spec.options
    if o["boft_butterfly_factor"] > 1:
        from peft.tuners.boft.layer import get_fbd_cuda

        if not get_fbd_cuda():  # peft then silently trains with factor 1
            raise SdLoraError("network.boft_butterfly_factor > 1 needs peft's BOFT CUDA extension (fbd_cuda), which "
                              "did not load here; without it peft uses 1. Set boft_butterfly_factor = 1")
    return BOFTConfig(boft_block_size=o["oft_block_size"], boft_block_num=o["oft_blocks"],
                      boft_n_butterfly_factor=o["boft_butterfly_factor"], boft_dropout=spec.dropout,
                      target_modules=spec.targets.names, init_weights=True)
