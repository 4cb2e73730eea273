"""Tiny captioners saved once per test session (built in code, random weights, no downloads)."""

from __future__ import annotations

import pytest

from tests.captioning import tiny_captioners


@pytest.fixture(scope="session")
def tiny_tagger_dir(tmp_path_factory):
    return tiny_captioners.save_tiny_tagger(tmp_path_factory.mktemp("tagger"))


@pytest.fixture(scope="session")
def tiny_blip_dir(tmp_path_factory):
    return tiny_captioners.save_tiny_blip(tmp_path_factory.mktemp("blip"))


@pytest.fixture(scope="session")
def tiny_florence_dir(tmp_path_factory):
    return tiny_captioners.save_tiny_florence(tmp_path_factory.mktemp("florence"))


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    return tiny_captioners.save_tiny_llava(tmp_path_factory.mktemp("llava"))


@pytest.fixture(scope="session")
def tiny_clipseg_dir(tmp_path_factory):
    return tiny_captioners.save_tiny_clipseg(tmp_path_factory.mktemp("clipseg"))


@pytest.fixture(scope="session")
def tiny_blip2_dir(tmp_path_factory):
    return tiny_captioners.save_tiny_blip2(tmp_path_factory.mktemp("blip2"))
