import pytest

from sd_lora.config.load import ConfigError, dump_config, load_config, parse_overrides
from sd_lora.errors import SdLoraError


def write(tmp_path, text, name="c.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_missing_config_file(tmp_path):
    with pytest.raises(SdLoraError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_invalid_toml(tmp_path):
    with pytest.raises(SdLoraError, match="not valid TOML"):
        load_config(write(tmp_path, "[train\nmax_steps = 3"))


def test_unknown_key_suggests_closest(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "[train]\nlearning_rat = 1e-4\n"))
    assert "train.learning_rat: unknown key; did you mean 'learning_rate'?" in str(e.value)


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match="trian: unknown key; did you mean 'train'"):
        load_config(write(tmp_path, "[trian]\nmax_steps = 3\n"))


def test_wrong_type_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.max_steps: expected integer, got 'ten'"):
        load_config(write(tmp_path, "[train]\nmax_steps = 'ten'\n"))


def test_bool_is_not_an_integer(tmp_path):
    with pytest.raises(ConfigError, match="network.rank: expected integer"):
        load_config(write(tmp_path, "[network]\nrank = true\n"))


def test_all_problems_reported_together(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "[network]\nrank = 0\n[train]\nlearning_rate = -1.0\nbatch_size = 0\n"))
    msg = str(e.value)
    assert "network.rank: must be at least 1, got 0" in msg
    assert "train.learning_rate: must be positive, got -1.0" in msg
    assert "train.batch_size: must be at least 1" in msg
    assert e.value.problems and len(e.value.problems) == 3


def test_resolution_must_be_multiple_of_8(tmp_path):
    with pytest.raises(ConfigError, match="data.resolution"):
        load_config(write(tmp_path, "[data]\nresolution = 500\n"))


def test_literal_choice_suggests(tmp_path):
    with pytest.raises(ConfigError, match=r"did you mean 'bf16'\?"):
        load_config(write(tmp_path, "[train]\nmixed_precision = 'bf61'\n"))


def test_overrides_parse_as_toml_values():
    assert parse_overrides(["train.max_steps=10", "data.dir=some/dir", "network.train_text_encoder=true",
                            "network.unet_targets=['attn2.to_q']"]) == {
        "train": {"max_steps": 10}, "data": {"dir": "some/dir"},
        "network": {"train_text_encoder": True, "unet_targets": ["attn2.to_q"]}}


def test_override_beats_file_and_is_validated(tmp_path):
    cfg = load_config(write(tmp_path, "[train]\nmax_steps = 5\n"), ["train.max_steps=7", "network.rank=4"])
    assert cfg.train.max_steps == 7 and cfg.network.rank == 4
    with pytest.raises(ConfigError, match="network.rank: must be at least 1"):
        load_config(write(tmp_path, "[train]\nmax_steps = 5\n"), ["network.rank=0"])


def test_bad_override_syntax():
    with pytest.raises(SdLoraError, match="expected section.key=value"):
        load_config(None, ["max_steps"])


def test_relative_paths_resolve_against_config_file(tmp_path):
    (tmp_path / "imgs").mkdir()
    cfg = load_config(write(tmp_path, "[data]\ndir = 'imgs'\n[output]\ndir = './out'\n"))
    assert cfg.data.dir == str((tmp_path / "imgs").resolve())
    assert cfg.output.dir == str((tmp_path / "out").resolve())


def test_dump_round_trips(tmp_path):
    cfg = load_config(write(tmp_path, "[network]\nrank = 8\nunet_targets = ['attn2.to_q', 'attn2.to_v']\n"))
    again = load_config(write(tmp_path, dump_config(cfg), "again.toml"))
    assert again == cfg


def test_a_type_error_does_not_hide_the_sections_other_problems():
    from sd_lora.config.load import ConfigError, config_from_dict

    with pytest.raises(ConfigError) as e:
        config_from_dict({"train": {"max_steps": "ten", "learning_rate": float("nan"), "batch_size": 0}})
    keys = [p.split(":", 1)[0] for p in e.value.problems]
    assert sorted(keys) == ["train.batch_size", "train.learning_rate", "train.max_steps"]
