"""Shared fixtures: tiny offline SD-shaped models, saved once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _tiny_dir(tmp_path_factory, family):
    from sd_lora.models.tiny import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp(f"tiny_{family}"), family=family, seed=0)


@pytest.fixture(scope="session")
def tiny_sd1_dir(tmp_path_factory):
    """A saved tiny SD1-like diffusers directory (conv proj_in/out, epsilon)."""
    return _tiny_dir(tmp_path_factory, "sd1")


@pytest.fixture(scope="session")
def tiny_sd2_dir(tmp_path_factory):
    """A saved tiny SD2-like diffusers directory (linear proj_in/out, v-prediction)."""
    return _tiny_dir(tmp_path_factory, "sd2")


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory):
    """A saved tiny SDXL-like diffusers directory (two text encoders, text_time embedding)."""
    return _tiny_dir(tmp_path_factory, "sdxl")


@pytest.fixture(scope="session")
def tiny_sd3_dir(tmp_path_factory):
    """A saved tiny SD3.5-like diffusers directory (MMDiT with dual attention and qk-norm, CLIP-L, CLIP-G, T5)."""
    from sd_lora.models.tiny_transformers import build_tiny_sd3

    return build_tiny_sd3(tmp_path_factory.mktemp("tiny_sd3"), variant="sd3.5", seed=0,
                          words=["red", "green", "blue", "yellow", "square", "circle"])


@pytest.fixture(scope="session")
def tiny_sd3_pipe(tiny_sd3_dir):
    """The tiny SD3 loaded without T5 (its conditioning part is zeros), as `model.t5 = false` loads it."""
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline.from_pretrained(str(tiny_sd3_dir), text_encoder_3=None, tokenizer_3=None)


@pytest.fixture(scope="session")
def tiny_flux_dir(tmp_path_factory):
    """A tiny FLUX.1 dev pipeline folder (guidance embedding; 2 double + 2 single blocks, CLIP-L, T5, 16-ch VAE)."""
    from sd_lora.models.tiny_transformers import build_tiny_flux

    return build_tiny_flux(tmp_path_factory.mktemp("tiny_flux") / "model", "dev")


@pytest.fixture(scope="session")
def tiny_flux_schnell_dir(tmp_path_factory):
    from sd_lora.models.tiny_transformers import build_tiny_flux

    return build_tiny_flux(tmp_path_factory.mktemp("tiny_flux_schnell") / "model", "schnell")
