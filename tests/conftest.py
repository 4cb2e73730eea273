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
def tiny_flux_dir(tmp_path_factory):
    """A tiny FLUX.1 dev pipeline folder (guidance embedding; 2 double + 2 single blocks, CLIP-L, T5, 16-ch VAE)."""
    from sd_lora.models.tiny_transformers import build_tiny_flux

    return build_tiny_flux(tmp_path_factory.mktemp("tiny_flux") / "model", "dev")


@pytest.fixture(scope="session")
def tiny_flux_schnell_dir(tmp_path_factory):
    from sd_lora.models.tiny_transformers import build_tiny_flux

    return build_tiny_flux(tmp_path_factory.mktemp("tiny_flux_schnell") / "model", "schnell")
