"""Schedulers by display name on an in-memory pipeline."""

from __future__ import annotations

import pytest

from sd_lora.errors import SdLoraError
from sd_lora.inference import SCHEDULERS, scheduler_name, set_scheduler
from sd_lora.models.tiny import build_tiny_pipeline


@pytest.fixture(scope="module")
def sd2_pipe():
    return build_tiny_pipeline("sd2", seed=0)


def test_every_name_round_trips_and_keeps_the_prediction_type(sd2_pipe):
    required = {"Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras", "DDIM", "UniPC"}
    assert required <= set(SCHEDULERS)
    for name in SCHEDULERS:
        assert set_scheduler(sd2_pipe, name) == name
        assert scheduler_name(sd2_pipe) == name
        assert sd2_pipe.scheduler.config.prediction_type == "v_prediction"


def test_karras_is_switched_off_again(sd2_pipe):
    set_scheduler(sd2_pipe, "dpmpp_2m_karras")
    assert sd2_pipe.scheduler.config.use_karras_sigmas
    set_scheduler(sd2_pipe, "DPM++ 2M")
    assert not sd2_pipe.scheduler.config.use_karras_sigmas


def test_unknown_scheduler_lists_the_choices(sd2_pipe):
    with pytest.raises(SdLoraError, match="'Euler b' is unknown.*Euler a"):
        set_scheduler(sd2_pipe, "Euler b")
