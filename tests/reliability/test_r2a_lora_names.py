"""Round 2 (A), class 3: adapter names written in prompts (`<lora:NAME:W>`) and prompt files resolve only inside
`--lora-dir` (no `..`, absolute path, `~` or link out of it), before the model loads; errors about a file that is
not an adapter never echo its contents. The CLI runs in-process (`run_main`): these cases are about name resolution
and messages, not about the process."""

from __future__ import annotations

import json
import shutil
import struct

import pytest

from tests.reliability.conftest import assert_ok, assert_user_error, run_main

SECRET = b"password=hunter2 and more private text"


@pytest.fixture
def folders(tmp_path, adapter_files):
    """loras/ holding style.safetensors; secret/ beside it holding a real adapter and a private text file."""
    (tmp_path / "loras").mkdir()
    shutil.copy(adapter_files["sd1"], tmp_path / "loras" / "style.safetensors")
    (tmp_path / "secret").mkdir()
    shutil.copy(adapter_files["sd1"], tmp_path / "secret" / "x.safetensors")
    (tmp_path / "secret" / "notes.safetensors").write_bytes(SECRET)
    return tmp_path


def generate(cwd, *args):
    return run_main("generate", "--model", "builtin:tiny", "--steps", "1", "--out", "out", "--lora-dir", "loras",
                   *args, cwd=cwd)


def refused_before_loading(result, *needles):
    message = assert_user_error(result, "generate", *needles)
    assert "Loading" not in result.stderr
    return message


@pytest.mark.parametrize("tag", ["../secret/x", "loras/../secret/x", "SECRET_ABS", "~/x"])
def test_tag_outside_the_lora_folder_is_refused(folders, tag):
    tag = str(folders / "secret" / "x") if tag == "SECRET_ABS" else tag
    result = generate(folders, "--prompt", f"a cat <lora:{tag}:1>")
    refused_before_loading(result, "inside --lora-dir", "no absolute path")
    assert not (folders / "out").exists()


def test_prompt_file_loras_outside_the_folder_are_refused(folders):
    (folders / "p.jsonl").write_text(json.dumps({"prompt": "a cat", "loras": ["../secret/x:1"]}) + "\n")
    refused_before_loading(generate(folders, "--prompt-file", "p.jsonl"), "../secret/x", "inside --lora-dir")


def test_a_link_out_of_the_lora_folder_is_refused(folders):
    (folders / "loras" / "evil.safetensors").symlink_to(folders / "secret" / "x.safetensors")
    refused_before_loading(generate(folders, "--prompt", "a cat <lora:evil:1>"), "link leading out of --lora-dir")


def test_a_tag_never_resolves_to_the_current_folder(folders):
    """`<lora:style>` means loras/style, even when ./style.safetensors exists; without --lora-dir it is an error."""
    shutil.copy(folders / "secret" / "x.safetensors", folders / "x.safetensors")
    refused_before_loading(generate(folders, "--prompt", "a cat <lora:x:1>"), "'x' not found in loras",
                           "LoRAs there: style")
    result = run_main("generate", "--model", "builtin:tiny", "--steps", "1", "--out", "out", "--prompt",
                     "a cat <lora:x:1>", cwd=folders)
    refused_before_loading(result, "give --lora-dir")


def test_a_tag_in_a_subfolder_of_the_lora_folder_works(folders):
    (folders / "loras" / "styles").mkdir()
    shutil.move(folders / "loras" / "style.safetensors", folders / "loras" / "styles" / "ink.safetensors")
    assert_ok(generate(folders, "--prompt", "a cat <lora:styles/ink:0.8>", "--seed", "1", "--width", "32",
                       "--height", "32"))
    assert len(list((folders / "out").glob("*.png"))) == 1


@pytest.mark.parametrize("name,flags", [("notes.safetensors", []), ("notes.pt", ["--allow-pickle"]),
                                        ("notes.bin", ["--allow-pickle"])])
def test_a_non_adapter_file_is_never_echoed(folders, name, flags):
    path = folders / "secret" / name
    path.write_bytes(SECRET)
    number = str(struct.unpack("<Q", SECRET[:8])[0])
    for command in (["inspect", path, *flags], ["generate", "--model", "builtin:tiny", "--steps", "1", "--out", "out",
                                                "--lora", path, "--prompt", "a cat", *flags]):
        result = run_main(*command, cwd=folders)
        message = assert_user_error(result, command[0], str(path))
        for leak in ("password", "hunter2", "private", number, "operand"):
            assert leak not in message, (leak, message)
