"""A tiny model saved as an original-layout single file loads and trains offline."""

import pytest

from sd_lora.errors import SdLoraError
from sd_lora.models.load import inspect_model
from sd_lora.models.families.unet_single_file import save_single_file
from sd_lora.models.tiny import build_tiny_pipeline
from sd_lora.train.recipe import run_training
from tests.train.conftest import tiny_config


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_single_file_checkpoint_trains(family, tiny_dataset, tmp_path):
    ckpt = tmp_path / f"tiny_{family}.safetensors"
    save_single_file(build_tiny_pipeline(family), ckpt, family)
    assert inspect_model(str(ckpt)).family == family
    result = run_training(tiny_config(ckpt, tiny_dataset, tmp_path / "out", train={"max_steps": 2}))
    assert result.steps == 2 and result.adapter_path.is_file() and result.coverage.complete


def test_pickle_checkpoint_refused_without_opt_in(tiny_dataset, tmp_path):
    import torch

    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, ckpt)
    with pytest.raises(SdLoraError, match="allow_pickle"):
        run_training(tiny_config(ckpt, tiny_dataset, tmp_path / "out"))
