"""What every model family provides, so the recipe, caches, samples, generation and tools never name a family.

A family is one module in this folder holding one `Family` subclass. It owns: recognising its models
(`matches`), which pipeline components it has (the denoiser, the text encoders and tokenizers), turning captions
into the denoiser's conditioning (`encode_prompts`), one denoiser call during training (`predict`), how the
pipeline takes pre-computed conditioning at generation (`pipeline_embeds`), the training objective (DDPM noise
prediction or rectified flow), adapter target presets and block indexing, the settings it refuses, and its
community-file facts (prefixes, modelspec architecture). Adding a family means adding one module here and
registering it in `__init__.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Family", "ModelParts", "transformer_file_metadata"]


@dataclass
class ModelParts:
    """A loaded pipeline's trainable-or-frozen modules in the order the family uses them."""

    denoiser: torch.nn.Module
    vae: torch.nn.Module
    text_encoders: list  # present encoders only (an SD3 model loaded without T5 has two)
    tokenizers: list
    text_encoder_names: list[str]  # pipeline attribute / adapter component name of each encoder


class Family:
    name = ""
    title = ""
    denoiser = "unet"  # pipeline attribute holding the denoiser; also its adapter component name
    text_encoders: tuple[str, ...] = ("text_encoder",)
    trainable_text_encoders: tuple[str, ...] | None = None  # None: all of them (SD3 keeps T5 frozen)
    tokenizers: tuple[str, ...] = ("tokenizer",)
    objective = "ddpm"  # "ddpm": noise / v prediction on a DDPM schedule; "flow": rectified flow matching
    vae_scaling_factor = 0.18215
    community_prefixes: dict[str, str] = {}
    modelspec_architecture = ""

    # ---- recognising models
    @classmethod
    def matches(cls, model_index: dict, denoiser_config: dict) -> bool:
        raise NotImplementedError

    def native_resolution(self, denoiser_config: dict, vae_config: dict) -> int:
        sample = denoiser_config["sample_size"]
        sample = sample if isinstance(sample, int) else sample[0]
        return int(sample) * 2 ** (len(vae_config["block_out_channels"]) - 1)

    def describe(self, pipe) -> list[str]:
        """Lines said once when a model of this family is loaded for training or generation (its variant, a
        licence note)."""
        return []

    # ---- components
    def parts(self, pipe) -> ModelParts:
        names = [n for n in self.text_encoders if getattr(pipe, n, None) is not None]
        tokenizers = [getattr(pipe, t) for n, t in zip(self.text_encoders, self.tokenizers) if n in names]
        return ModelParts(getattr(pipe, self.denoiser), pipe.vae, [getattr(pipe, n) for n in names], tokenizers, names)

    def components(self, pipe) -> dict[str, torch.nn.Module]:
        """Adapter component name -> module, for every component the pipeline has."""
        parts = self.parts(pipe)
        return {self.denoiser: parts.denoiser, **dict(zip(parts.text_encoder_names, parts.text_encoders))}

    # ---- conditioning and the denoiser
    def encode_prompts(self, encoders: list, tokenizers: list, captions: list[str], clip_skip: int | None = None,
                       windows: int = 1, **options):
        raise NotImplementedError

    def predict(self, denoiser, noisy: torch.Tensor, timesteps: torch.Tensor, embeds, batch: dict,
                **options) -> torch.Tensor:
        """One denoiser call; `options` are `predict_options(cfg.train)`."""
        raise NotImplementedError

    def predict_options(self, train) -> dict:
        """Keyword arguments of `predict` from the [train] config section (e.g. FLUX dev's guidance value)."""
        return {}

    def pipeline_embeds(self, pos, neg, dtype) -> dict:
        """Keyword arguments that give the diffusers pipeline pre-computed conditioning."""
        raise NotImplementedError

    def uses_cfg(self, pipe, guidance: float) -> bool:
        return guidance > 1

    def zero_negative(self, pipe, negative_prompt: str) -> bool:
        """Whether an empty negative prompt is all zeros rather than the encoded empty string."""
        return False

    def encode_options(self, denoiser, data=None) -> dict:
        """Family-specific keyword arguments of `encode_prompts`, from the denoiser and the [data] config section
        when training (e.g. SD3's T5 length; generation uses the defaults)."""
        return {}

    def load_options(self, model_cfg) -> dict:
        """Extra keyword arguments for the pipeline's from_pretrained (e.g. SD3 without T5)."""
        return {}

    # ---- training
    # settings only this family reads: (section, key, default); set on another family's model they are an error
    own_settings: tuple[tuple[str, str, object], ...] = ()

    def check_training(self, cfg) -> list[str]:
        """Problems with settings this family cannot use (each names the key and what to do)."""
        return []

    def target_presets(self) -> dict[str, list[str]]:
        """network.preset -> denoiser module-name suffixes."""
        raise NotImplementedError

    def dead_targets(self, denoiser_config) -> set[str]:
        """Denoiser modules a preset would match that it must leave out: ones that cannot change the output (they
        would get no gradient), or a module outside the blocks that shares a preset's suffix."""
        return set()

    def block_index(self, module_name: str, denoiser_config) -> int | None:
        """The block-wise index (network.block_dims / block_lr_weights) of a denoiser module, None outside blocks."""
        return None

    def num_blocks(self, denoiser_config) -> int:
        return 0

    def save_tiny(self, out_dir, seed: int = 0, words=()):
        """Write a tiny random model of this family as a diffusers folder (offline, seconds); returns the folder."""
        raise NotImplementedError(f"no tiny {self.name} model")

    def block_names(self, denoiser_config) -> list[str]:
        return [str(i) for i in range(self.num_blocks(denoiser_config))]

    def blocks(self, denoiser) -> list[torch.nn.Module]:
        """The denoiser's blocks in execution order (what train.blocks_to_swap counts from the end)."""
        raise NotImplementedError

    # ---- what the file formats, tools, CLI and tiny models ask (s6-layer)
    short_name = ""  # in messages about files and models ("an SDXL adapter")
    # how community files name the denoiser's modules: "diffusers" (its module paths), "sgm" (SDXL's original
    # block numbering, from the UNet config), "original" (the original checkpoint's modules, fused, per `keys`)
    community_naming = "diffusers"
    keys = None  # the module mapping diffusers paths <-> an "original" checkpoint's (sd3_keys)
    kohya_script: str | None = None  # kohya sd-scripts' LoRA training script for this family
    bakes_to_single_file = True  # `bake` writes a full single-file checkpoint (False: transformer-only files)

    def recognise_components(self, components) -> str | None:
        """Why a peft folder adapting `components` (names) is for this family; None: it cannot tell."""
        return None

    def pointwise_conv(self, component: str, path: str) -> bool:
        """Whether module `path` of `component` is a 1x1 convolution (a LoHa / LoKr file keeps only its flattened
        input width, so the tools must know)."""
        return False

    def build_tiny(self, seed: int = 0, words=(), tmp_dir=None):
        """A tiny random pipeline of this family in memory (offline, seconds)."""
        raise NotImplementedError(f"no in-memory tiny {self.name} pipeline; use save_tiny")

    def default_resolution(self, v_prediction: bool = False) -> int:
        """The training resolution a file's metadata states when the run did not say."""
        return 1024

    def default_variant(self) -> str | None:
        """The released model a file is for when the run did not say (`keys.variant` names them)."""
        return None

    def file_metadata(self, v_prediction: bool = False, variant: str | None = None) -> dict[str, str]:
        """`ss_base_model_version`, `ss_v2` and the modelspec architecture / implementation / prediction type, as
        kohya writes them for this family's LoRA files."""
        raise NotImplementedError

    def file_recognisers(self) -> list[tuple[int, object]]:
        """(rank, recogniser) pairs; `formats.detect` asks every family's, lowest rank first. A recogniser
        `(keys, tensors, metadata) -> (family name or None, why) or None` says whose file it is, or that it cannot
        tell and why (None: no opinion). Ranks: 10-59 transformer families, 60-99 UNet families; within them
        names < shapes < metadata < fallbacks."""
        return []


def transformer_file_metadata(architecture: str, version: str, implementation: str) -> dict[str, str]:
    """`Family.file_metadata` of a rectified-flow transformer family's variant."""
    return {"ss_base_model_version": version, "ss_v2": "False", "modelspec.architecture": architecture,
            "modelspec.implementation": implementation, "modelspec.prediction_type": "flow"}
