"""`sd-lora caption` end to end: a hub id from a temporary HF cache in the hub layout, offline; a missing model;
replaying the recorded settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.models.hub_cache import add_to_hub_cache

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory, tiny_tagger_dir):
    home = tmp_path_factory.mktemp("hf_home")
    add_to_hub_cache(home, "tiny-org/tiny-tagger", tiny_tagger_dir, commit="c0ffee" * 6 + "abcd")
    return home


def run_cli(*args, hf_home):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, "-m", "sd_lora", *args], capture_output=True, text=True, env=env)


def _folder(path: Path) -> Path:
    path.mkdir()
    Image.new("RGB", (24, 24), (255, 0, 0)).save(path / "one.png")
    Image.new("RGB", (24, 24), (0, 0, 255)).save(path / "two.jpg")
    return path


def test_cached_hub_tagger_offline_with_trigger(tmp_path, hf_home):
    folder = _folder(tmp_path / "ds")
    done = run_cli("caption", str(folder), "--backend", "wd14", "--model", "tiny-org/tiny-tagger", "--trigger",
                   "ohwx", "--threshold", "0.95", "--character-threshold", "0.95", hf_home=hf_home)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (folder / "one.txt").read_text() == "ohwx, red theme"
    assert (folder / "two.txt").read_text() == "ohwx, blue theme"
    assert "data.keep_tokens = 1" in done.stdout
    run = json.loads((folder / "sd-lora-captions.json").read_text())["runs"][0]
    assert run["model"]["model"] == "tiny-org/tiny-tagger" and run["model"]["revision"] == "c0ffee" * 6 + "abcd"

    # Replaying the record without repeating any option gives the same captions.
    for name in ("one.txt", "two.txt"):
        (folder / name).unlink()
    again = run_cli("caption", str(folder), "--reuse-settings", hf_home=hf_home)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (folder / "one.txt").read_text() == "ohwx, red theme"
    replay = json.loads((folder / "sd-lora-captions.json").read_text())["runs"][1]
    assert replay["captioner"] == {**run["captioner"], "revision": "c0ffee" * 6 + "abcd"}  # pinned to the commit
    assert replay["job"] == run["job"]


def test_missing_model_names_the_download_command(tmp_path, hf_home):
    done = run_cli("caption", str(_folder(tmp_path / "ds")), "--backend", "wd14", "--model", "tiny-org/absent",
                   hf_home=hf_home)
    assert done.returncode == 2
    assert "`hf download tiny-org/absent`" in done.stderr and "Traceback" not in done.stderr


def test_reuse_without_a_record_is_one_error(tmp_path, hf_home):
    done = run_cli("caption", str(_folder(tmp_path / "ds")), "--reuse-settings", hf_home=hf_home)
    assert done.returncode == 2 and "no recorded caption run" in done.stderr


@pytest.mark.parametrize("command", [["caption"], ["masks", "--prompt", "person"]])
def test_a_missing_folder_is_named_before_any_model_is_looked_up(command, tmp_path):
    result = run_cli(*command, str(tmp_path / "no-such-folder"), "--model", "nobody/absent-model", hf_home=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "no-such-folder: not a folder" in result.stderr and "absent-model" not in result.stderr
    assert "Traceback" not in result.stderr
