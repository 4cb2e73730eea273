"""kohya command lines and --config_file -> sd-lora configs; the kohya-aware hints of the loader and the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sd_lora.config.kohya.args import to_toml, translate_args
from sd_lora.config.load import ConfigError, config_from_dict, load_config
from sd_lora.errors import SdLoraError

TYPICAL = ("accelerate launch --num_cpu_threads_per_process 1 train_network.py "
           "--pretrained_model_name_or_path=/models/v1-5.safetensors --train_data_dir=/data/img "
           "--output_dir=/out --output_name=mychar --resolution=512,512 --network_module=networks.lora "
           "--network_dim=32 --network_alpha=16 --learning_rate=1e-4 --unet_lr=1e-4 --text_encoder_lr=5e-5 "
           "--optimizer_type=AdamW8bit --lr_scheduler=cosine_with_restarts --lr_scheduler_num_cycles=3 "
           "--lr_warmup_steps=0.1 --train_batch_size=2 --max_train_steps=1000 --save_every_n_epochs=1 "
           "--mixed_precision=fp16 --save_precision=fp16 --seed=42 --caption_extension=.txt --cache_latents "
           "--xformers --clip_skip=2 --shuffle_caption --keep_tokens=1 --min_snr_gamma=5 --noise_offset=0.05 "
           "--max_token_length=225 --enable_bucket --logging_dir=/out/logs --sample_sampler=euler_a")


def test_a_typical_command_line_maps_key_by_key():
    t = translate_args(TYPICAL)
    c = t.config
    assert c["model"] == {"pretrained": "/models/v1-5.safetensors"}
    assert c["data"] == {"dir": "/data/img", "resolution": 512, "caption_extension": ".txt", "cache_latents": True,
                         "shuffle_caption": True, "keep_tokens": 1, "max_token_length": 225, "enable_bucket": True}
    assert c["network"] == {"type": "lora", "rank": 32, "alpha": 16.0, "preset": "attn-mlp",
                            "train_text_encoder": True}
    assert c["train"] == {"learning_rate": 1e-4, "unet_lr": 1e-4, "text_encoder_lr": 5e-5, "optimizer": "adamw8bit",
                          "lr_scheduler": "cosine_with_restarts", "lr_scheduler_num_cycles": 3,
                          "lr_warmup_steps": 100, "batch_size": 2, "max_steps": 1000, "mixed_precision": "fp16",
                          "seed": 42, "attention": "xformers", "clip_skip": 2, "min_snr_gamma": 5.0,
                          "noise_offset": 0.05}
    assert c["output"] == {"dir": "/out", "name": "mychar", "save_every_n_epochs": 1, "save_precision": "fp16"}
    assert c["sample"] == {"scheduler": "Euler a"}
    assert ("logging_dir", "logging/tracker naming; sd-lora writes its logs to output.dir/logs") in t.ignored
    config_from_dict(c)  # a valid sd-lora config as it stands


def test_kohya_defaults_that_differ_are_written_out():
    c = translate_args(["--pretrained_model_name_or_path", "builtin:tiny", "--train_data_dir", "/d"]).config
    assert c["network"]["rank"] == 4 and c["network"]["alpha"] == 1.0
    assert c["train"]["learning_rate"] == 2e-6 and c["train"]["max_steps"] == 1600
    assert c["data"]["caption_extension"] == ".caption" and c["data"]["resolution"] == 512
    assert c["output"] == {"save_precision": "fp32", "name": "last"}
    assert c["network"]["train_text_encoder"] is True


def test_command_line_overrides_the_config_file(tmp_path):
    (tmp_path / "k.toml").write_text("""
[model_arguments]
pretrained_model_name_or_path = "builtin:tiny"
v2 = false
[training_arguments]
max_train_steps = 50
gradient_checkpointing = false
network_dim = 8
[additional_network_arguments]
network_args = ["conv_dim=4", "conv_alpha=2"]
network_train_unet_only = true
""")
    t = translate_args(["--config_file", "k.toml", "--network_dim", "16"], base_dir=tmp_path)
    c = t.config
    assert c["network"]["rank"] == 16 and c["train"]["max_steps"] == 50
    assert c["network"]["conv_rank"] == 4 and c["network"]["conv_alpha"] == 2.0 and c["network"]["preset"] == "full"
    assert c["network"]["train_text_encoder"] is False
    assert "family" not in c.get("model", {}) and "gradient_checkpointing" not in c["train"]  # false flags


def test_sdxl_script_sets_the_family_and_lycoris_algos():
    c = translate_args("sdxl_train_network.py --network_module lycoris.kohya --network_args algo=loha "
                       "--pretrained_model_name_or_path builtin:tiny").config
    assert c["model"]["family"] == "sdxl" and c["network"]["type"] == "loha" and c["data"]["resolution"] == 1024


def test_block_weights_and_dims_from_network_args():
    down, up = ",".join(["0.5"] * 12), ",".join(["2"] * 12)
    dims = ",".join(["4"] * 25)
    c = translate_args(["--network_args", f"down_lr_weight={down}", "mid_lr_weight=1", f"up_lr_weight={up}",
                        f"block_dims={dims}"]).config
    assert c["network"]["block_lr_weights"] == [0.5] * 12 + [1.0] + [2.0] * 12
    assert c["network"]["block_dims"] == [4] * 25


def test_everything_that_cannot_carry_over_is_listed_at_once():
    with pytest.raises(SdLoraError) as e:
        translate_args("--network_module networks.dylora --color_aug --resume /state --optimizer_args betas=0.9,0.99 "
                       "--save_model_as ckpt --network_dimm 8 --resolution 768,512 --sample_sampler k_lms")
    msg = str(e.value)
    assert msg.startswith("8 kohya option(s) cannot be carried over")
    for part in ("network module 'networks.dylora' is not supported", "--color_aug True: not supported",
                 "--resume: kohya's saved states cannot be resumed", "only weight_decay is carried over",
                 "sd-lora writes .safetensors only", "--network_dimm: not an option", "did you mean --network_dim?",
                 "non-square resolution", "sampler 'k_lms' is not available"):
        assert part in msg, part


def test_fractional_warmup_needs_the_step_count():
    with pytest.raises(SdLoraError, match="fraction of the steps needs --max_train_steps"):
        translate_args("--lr_warmup_steps 0.05 --max_train_epochs 4")


def test_relative_paths_resolve_against_the_working_directory(tmp_path):
    c = translate_args("--train_data_dir img --output_dir out --pretrained_model_name_or_path org/name",
                       base_dir=tmp_path).config
    assert c["data"]["dir"] == str(tmp_path / "img") and c["output"]["dir"] == str(tmp_path / "out")
    assert c["model"]["pretrained"] == "org/name"  # a hub id stays a hub id


def test_sample_prompts_file_is_read(tmp_path):
    (tmp_path / "p.txt").write_text("# comment\na cat --n blurry --w 512\n\na dog\n")
    c = translate_args("--sample_prompts p.txt --sample_every_n_steps 100", base_dir=tmp_path).config
    assert c["sample"] == {"prompts": ["a cat --n blurry --w 512", "a dog"], "every_n_steps": 100}


def test_to_toml_loads_back(tmp_path):
    t = translate_args(TYPICAL.replace("/models/v1-5.safetensors", "builtin:tiny"))
    path = tmp_path / "c.toml"
    path.write_text(to_toml(t, "header line"))
    text = path.read_text()
    assert text.startswith("# header line\n") and "#   --logging_dir:" in text
    cfg = load_config(path)
    assert cfg.network.rank == 32 and cfg.train.lr_warmup_steps == 100 and cfg.data.dir == "/data/img"


@pytest.mark.parametrize("tree, expected", [
    ({"data": {"train_data_dir": "x"}}, "data.train_data_dir: unknown key; kohya's 'train_data_dir' is 'data.dir' here"),
    ({"network": {"network_alpha": 4}}, "network.network_alpha: unknown key; kohya's 'network_alpha' is 'network.alpha' here"),
    ({"network": {"network_dim": 4}}, "network.network_dim: unknown key; kohya's 'network_dim' is 'network.rank' here"),
    ({"output": {"output_name": "x"}}, "output.output_name: unknown key; kohya's 'output_name' is 'output.name' here"),
    ({"datasets": [{}]}, "datasets: unknown key; this is a kohya dataset config: point data.config at the file"),
])
def test_loader_hints_name_the_sd_lora_key(tree, expected):
    with pytest.raises(ConfigError) as e:
        config_from_dict(tree)
    assert expected in str(e.value)


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "sd_lora", *args], capture_output=True, text=True, cwd=cwd,
                          env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})


def test_train_names_kohya_options_given_to_it(tmp_path):
    r = _cli("train", "--train_data_dir", "img", "--network_dim", "8", cwd=tmp_path)
    assert r.returncode == 2
    assert "--train_data_dir is data.dir, --network_dim is network.rank" in r.stderr and "--kohya-args" in r.stderr


def test_from_kohya_writes_a_config_and_never_overwrites(tmp_path):
    (tmp_path / "img").mkdir()
    r = _cli("from-kohya", "--out", "c.toml", "--", "train_network.py", "--pretrained_model_name_or_path",
             "builtin:tiny", "--train_data_dir", "img", "--network_dim", "8", "--logging_dir", "logs", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "--network_dim -> network.rank" in r.stdout and "--logging_dir: logging" in r.stdout
    cfg = load_config(tmp_path / "c.toml")
    assert cfg.network.rank == 8 and cfg.data.dir == str(tmp_path / "img")
    before = (tmp_path / "c.toml").read_text()
    r = _cli("from-kohya", "--out", "c.toml", "--", "--network_dim", "4", cwd=tmp_path)
    assert r.returncode == 2 and "already exists" in r.stderr and (tmp_path / "c.toml").read_text() == before


def test_train_kohya_args_and_dataset_config_dry_run(tmp_path):
    from PIL import Image

    (tmp_path / "a").mkdir()
    for i in range(3):
        Image.new("RGB", (64, 64), (i, 0, 0)).save(tmp_path / "a" / f"{i}.png")
    (tmp_path / "ds.toml").write_text("[[datasets]]\nbatch_size = 2\n[[datasets.subsets]]\nimage_dir = 'a'\n"
                                      "num_repeats = 3\n")
    r = _cli("train", "--kohya-args", "--pretrained_model_name_or_path builtin:tiny --resolution 64 "
             "--max_train_epochs 2 --dataset_config ds.toml", "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "9 samples" in r.stdout and "training length: 10 steps = 2 epoch(s)" in r.stdout
    r = _cli("train", "--dataset-config", "ds.toml", "--set", "data.resolution=64", "--set", "train.max_epochs=1",
             "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "training length: 5 steps = 1 epoch(s)" in r.stdout
