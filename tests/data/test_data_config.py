import dataclasses
import typing

import pytest

from sd_lora.config.data import DataConfig, SubsetConfig


@pytest.mark.parametrize("cls", [DataConfig, SubsetConfig])
def test_every_field_has_a_default_and_help(cls):
    obj = cls()
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f.name
        assert hasattr(obj, f.name)


def test_defaults_are_valid_and_match_the_documented_ones():
    cfg = DataConfig()
    assert cfg.validate() == []
    assert (cfg.resolution, cfg.caption_extension, cfg.bucket_reso_steps) == (512, ".txt", 64)


def test_all_problems_reported_together():
    cfg = DataConfig(resolution=500, caption_dropout_rate=1.5, keep_tokens=-1, caption_extension="txt",
                     random_crop=True, cache_latents=True, cache_latents_to_disk=False, validation_split=1.0,
                     validation_dir="v", num_workers=-1,
                     subsets=[SubsetConfig(dir="", num_repeats=0), SubsetConfig(dir="x", num_class_images=3)])
    problems = cfg.validate()
    expected = ["data.resolution: must be a positive multiple of 8, got 500",
                "data.caption_dropout_rate: must be between 0 and 1, got 1.5",
                "data.keep_tokens: must not be negative", "data.caption_extension: must start with a dot",
                "data.random_crop: a cached latent fixes the crop", "data.validation_split: must be in [0, 1)",
                "data.validation_split: set either", "data.num_workers: must be at least 0",
                "data.subsets[0].dir: must name", "data.subsets[0].num_repeats: must be at least 1",
                "data.subsets[1].num_class_images: only applies to a regularisation subset"]
    for fragment in expected:
        assert any(p.startswith(fragment) for p in problems), (fragment, problems)
    assert len(problems) == len(expected)


def test_bucket_settings_are_checked_only_with_buckets():
    assert DataConfig(bucket_reso_steps=60, min_bucket_reso=100).validate() == []
    problems = DataConfig(enable_bucket=True, bucket_reso_steps=64, min_bucket_reso=100, max_bucket_reso=256,
                          resolution=512).validate()
    assert any(p.startswith("data.min_bucket_reso: must be a positive multiple of bucket_reso_steps") for p in problems)
    assert any(p.startswith("data.resolution: must lie between") for p in problems)
    assert DataConfig(bucket_no_upscale=True).validate() == \
        ["data.bucket_no_upscale: only applies with enable_bucket = true"]


def test_loader_maps_toml_tables_onto_subsets():
    from sd_lora.config.load import config_from_dict

    cfg = config_from_dict({"data": {"dir": "d", "subsets": [{"dir": "a", "num_repeats": 3, "flip_aug": True}]}})
    assert cfg.data.subsets[0] == SubsetConfig(dir="a", num_repeats=3, flip_aug=True)
    allowed = {int, float, bool, str}
    for f in dataclasses.fields(SubsetConfig):
        hint = typing.get_type_hints(SubsetConfig)[f.name]
        args = set(typing.get_args(hint)) - {type(None)} or {hint}
        assert args <= allowed, f.name
