"""Round 2 (C), class 16 (code health): the adapter metadata from explicit inputs, one source per metadata key, a
resume fingerprint derived from the config sections themselves, state tensors through the one safetensors layer.

All in-process on plain config objects and a data scan: none of these needs a model.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from sd_lora.config.fields import option
from sd_lora.config.schema import Config, ModelConfig, NetworkConfig, TrainConfig
from sd_lora.data import scan_dataset
from sd_lora.errors import SdLoraError
from sd_lora.formats.metadata import INFO_KEYS, community_metadata, minimum_metadata
from sd_lora.train.checkpoint import FINGERPRINT_SECTIONS, check_fingerprint, learning_settings, run_fingerprint
from sd_lora.train.facts import RunFacts, training_facts
from sd_lora.train.kohya_facts import kohya_fields
from tests.reliability.conftest import write_image


@pytest.fixture
def cfg_and_scan(tmp_path):
    for i in range(3):
        write_image(tmp_path / "data" / f"{i}.png", colour=(80 * i, 30, 30), caption=f"red, tag{i}")
    cfg = Config()
    cfg.data.dir, cfg.data.resolution = str(tmp_path / "data"), 32
    cfg.network.rank, cfg.network.dropout = 4, 0.1
    cfg.train.noise_offset, cfg.train.clip_skip = 0.05, 2
    return cfg, scan_dataset(cfg.data)


def run_facts(**changes) -> RunFacts:
    base = dict(family="sd1", prediction_type="epsilon", base_model_name="builtin:tiny",
                base_model_location="/nowhere/tiny", global_step=6, epoch=2, max_steps=9, steps_per_epoch=3,
                batches_per_epoch=3)
    return RunFacts(**{**base, **changes})


# ------------------------------------------------------------------ explicit inputs


def test_training_facts_come_from_the_config_the_scan_and_run_facts_alone(cfg_and_scan):
    cfg, scan = cfg_and_scan
    samples = [{"index": 0, "prompt": "a cat"}]
    cfg.sample.every_n_steps, cfg.sample.prompts = 3, ["a cat"]
    facts = training_facts(cfg, scan, run_facts(samples=samples, validation_images=1, num_processes=2))
    assert facts["steps"] == 6 and facts["max_train_steps"] == 9 and facts["epochs"] == 3  # ceil(9 / 3)
    assert facts["num_train_images"] == 3 and facts["samples"] == samples
    assert facts["base_model_name"] == "builtin:tiny"  # a location that does not exist: the name, never a path
    assert facts["tag_frequency"] == {"data": {"red": 3, "tag0": 1, "tag1": 1, "tag2": 1}}
    kohya = facts["kohya_fields"]
    assert kohya["ss_num_validation_images"] == 1 and kohya["ss_total_batch_size"] == 2  # batch 1 x 2 processes
    assert kohya["ss_epoch"] == 2 and kohya["ss_num_batches_per_epoch"] == 3


def test_without_a_loader_the_epoch_comes_from_the_state(cfg_and_scan):
    cfg, scan = cfg_and_scan
    facts = training_facts(cfg, scan, run_facts(steps_per_epoch=None, batches_per_epoch=None, epoch=5))
    assert facts["epochs"] == 5 and facts["kohya_fields"]["ss_epoch"] == 5


# ------------------------------------------------------------------ one source per metadata key


def test_no_network_dim_placeholder_is_written_before_the_weights_are_measured(cfg_and_scan):
    cfg, scan = cfg_and_scan
    meta = community_metadata(training_facts(cfg, scan, run_facts()))
    assert not {"ss_network_dim", "ss_network_alpha", "ss_network_module"} & set(meta)  # only save_adapter's
    assert "ss_network_dim" not in minimum_metadata({"family": "sd1"})
    measured = minimum_metadata({"family": "sd1", "network_dim": 8, "network_alpha": 4.0})
    assert measured["ss_network_dim"] == "8" and measured["ss_network_alpha"] == "4.0"


def test_each_kohya_key_has_one_source(cfg_and_scan):
    cfg, scan = cfg_and_scan
    cfg.network.train_text_encoder, cfg.train.multires_noise_iterations = True, 4
    facts = training_facts(cfg, scan, run_facts())
    from_info = {INFO_KEYS[k][0] for k, v in facts.items() if k in INFO_KEYS and v is not None}
    assert from_info & set(facts["kohya_fields"]) == set()
    meta = community_metadata(facts)
    # the values are kohya's forms, written once
    assert (meta["ss_noise_offset"], meta["ss_clip_skip"], meta["ss_network_dropout"]) == ("0.05", "2", "0.1")
    assert meta["ss_multires_noise_iterations"] == "4" and meta["ss_text_encoder_lr"] == str(cfg.train.learning_rate)
    assert meta["modelspec.encoder_layer"] == "2"


def test_unset_kohya_options_are_written_as_kohya_writes_them(cfg_and_scan):
    cfg, scan = cfg_and_scan
    cfg.train.clip_skip, cfg.train.noise_offset, cfg.network.dropout = None, 0.0, 0.0
    meta = community_metadata(training_facts(cfg, scan, run_facts()))
    assert (meta["ss_clip_skip"], meta["ss_noise_offset"], meta["ss_network_dropout"]) == ("None", "None", "None")
    assert "modelspec.encoder_layer" not in meta


# ------------------------------------------------------------------ the resume fingerprint


@pytest.mark.parametrize("section", [ModelConfig, NetworkConfig, TrainConfig])
def test_a_new_config_field_is_in_the_fingerprint_unless_marked_free(section):
    grown = dataclasses.make_dataclass("Grown", [("new_knob", float, option(0.25, "a new setting")),
                                                 ("new_switch", bool, option(False, "ops only", resume="free"))],
                                       bases=(section,))
    settings = learning_settings(grown())
    assert settings["new_knob"] == 0.25 and "new_switch" not in settings
    declared = {f.name for f in dataclasses.fields(section) if f.metadata.get("resume") != "free"}
    assert set(learning_settings(section())) == declared


def test_the_fingerprint_covers_each_section_and_the_data(cfg_and_scan):
    cfg, scan = cfg_and_scan
    fp = run_fingerprint(cfg, scan)
    assert set(fp) == {*FINGERPRINT_SECTIONS, "dataset"}
    assert fp["network"]["dropout"] == 0.1 and fp["train"]["noise_offset"] == 0.05
    assert "max_steps" not in fp["train"] and "resume" not in fp["train"] and "init_weights" not in fp["network"]
    json.dumps(fp)  # stored in the state's marker


def test_a_changed_learning_setting_refuses_the_state_and_a_free_one_does_not(cfg_and_scan, tmp_path):
    cfg, scan = cfg_and_scan
    saved = json.loads(json.dumps(run_fingerprint(cfg, scan)))
    cfg.train.max_steps, cfg.train.log_every_n_steps = 5000, 1  # free to change on resume
    assert check_fingerprint(tmp_path, saved, run_fingerprint(cfg, scan), ignore_mismatch=False) == []
    cfg.train.noise_offset = 0.2
    with pytest.raises(SdLoraError, match=r"train\.noise_offset: state 0\.05, this run 0\.2"):
        check_fingerprint(tmp_path, saved, run_fingerprint(cfg, scan), ignore_mismatch=False)
    assert check_fingerprint(tmp_path, saved, run_fingerprint(cfg, scan), ignore_mismatch=True) == [
        "train.noise_offset: state 0.05, this run 0.2"]
    cfg.network.rank = 8  # the tensors' shapes: never overridable
    with pytest.raises(SdLoraError, match="(?s)network.rank: state 4, this run 8.*cannot be changed on resume"):
        check_fingerprint(tmp_path, saved, run_fingerprint(cfg, scan), ignore_mismatch=True)


def test_a_state_saved_before_sections_were_recorded_still_resumes(cfg_and_scan, tmp_path):
    cfg, scan = cfg_and_scan
    current = run_fingerprint(cfg, scan)
    old = {"base model": cfg.model.pretrained, "network": {"type": "lora", "rank": 4, "alpha": 16.0},
           "dataset": current["dataset"], "seed": cfg.train.seed, "optimizer": cfg.train.optimizer}
    assert check_fingerprint(tmp_path, old, current, ignore_mismatch=False) == []
    with pytest.raises(SdLoraError, match=r"train\.seed: state 1, this run"):
        check_fingerprint(tmp_path, {**old, "seed": 1}, current, ignore_mismatch=False)
    with pytest.raises(SdLoraError, match=r"model\.pretrained: state 'other/model'"):
        check_fingerprint(tmp_path, {**old, "base model": "other/model"}, current, ignore_mismatch=False)


# ------------------------------------------------------------------ one safetensors layer


def test_state_tensors_round_trip_through_the_safetensors_layer(tmp_path):
    import torch

    from sd_lora.formats.safetensors_io import read_tensor_file, write_tensors

    tensors = {"b.lora_B.weight": torch.zeros(4, 2), "a.lora_A.weight": torch.arange(8.0).reshape(2, 4)}
    path = write_tensors(tmp_path / "x.safetensors", tensors, {"name": "caf\udce9"})
    back, meta = read_tensor_file(path)
    assert all(torch.equal(back[k], tensors[k]) for k in tensors)
    assert meta == {"name": "caf\\xe9"}  # a non-UTF-8 name is written as valid text
    assert write_tensors(tmp_path / "y.safetensors", dict(reversed(tensors.items())), {"name": "caf\udce9"}) \
        .read_bytes() == path.read_bytes()  # deterministic: the same tensors give the same bytes
    assert not list(Path(tmp_path).glob(".*.tmp"))
