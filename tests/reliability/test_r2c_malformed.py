"""Round 2 (C), class 8 (malformed inputs): link loops and dangling links in data folders, file names that are not
UTF-8 in every place that walks a folder, a model whose weights do not fill its config, a saved training state with a
file cut short.

Cases about what a user sees on a terminal run `python -m sd_lora` in a subprocess with `PYTHONIOENCODING=utf-8:strict`
(a UTF-8 locale's stdout, which refuses surrogate-escaped names); the others call the CLI's `main()` in-process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sd_lora.cli.main import main
from tests.reliability.conftest import cli_env, write_image

CAFE = b"caf\xe9"  # Latin-1 bytes: not UTF-8, so Python sees the name surrogate-escaped ('caf\udce9')


def fs(parent: Path, name: bytes) -> Path:
    """The path of a child whose name is raw bytes (how a Latin-1 name from an old archive arrives)."""
    return Path(os.fsdecode(os.fsencode(parent) + b"/" + name))


def strict_cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI with a stdout that refuses to encode surrogates, as in an en_US.UTF-8 terminal."""
    env = {**cli_env(cwd), "PYTHONIOENCODING": "utf-8:strict"}
    cmd = [sys.executable, "-m", "sd_lora", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, env=env, timeout=120)


def text(stream: bytes) -> str:
    return stream.decode("utf-8")  # strict: the output itself must be valid UTF-8


# ------------------------------------------------------------------ links in data folders


@pytest.fixture
def linked_data(tmp_path):
    folder = tmp_path / "data"
    write_image(folder / "good.png")
    os.symlink("loop2.png", folder / "loop1.png")
    os.symlink("loop1.png", folder / "loop2.png")
    os.symlink("missing.png", folder / "dangling.png")
    os.symlink("..", folder / "up")  # a flat folder's other subfolders are never read
    return folder


def test_image_link_loops_and_dangling_links_are_named_as_skipped(linked_data, tmp_path, capsys):
    code = main(["train", "--set", f"data.dir={linked_data}", "--set", "data.resolution=32", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"{linked_data / 'loop1.png'}: a symbolic link loop" in out
    assert f"{linked_data / 'loop2.png'}: a symbolic link loop" in out
    assert f"{linked_data / 'dangling.png'}: a broken symbolic link (it points to missing.png" in out
    assert "training images: 1, regularisation images: 0, skipped files: 3" in out


@pytest.mark.parametrize("link, target, needle", [
    ("10_self", ".", "is a link to"),
    ("10_parent", "..", "is a link to"),
    ("3_loop", "3_loop", "is a symbolic link loop"),
    ("4_gone", "nowhere", "is a symbolic link to nowhere, which does not exist"),
])
def test_a_repeat_folder_link_that_loops_or_leads_nowhere_is_one_error(tmp_path, capsys, link, target, needle):
    folder = tmp_path / "data"
    write_image(folder / "10_real" / "a.png")
    os.symlink(target, folder / link)
    code = main(["train", "--set", f"data.dir={folder}", "--set", "data.resolution=32", "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("sd-lora train: error:") == 1, err
    assert f"{link!r} {needle}" in err and "remove the link" in err


def test_a_repeat_folder_link_to_another_folder_is_read(tmp_path, capsys):
    folder = tmp_path / "data"
    write_image(folder / "10_real" / "a.png")
    write_image(tmp_path / "elsewhere" / "b.png")
    os.symlink(tmp_path / "elsewhere", folder / "2_linked")
    assert main(["train", "--set", f"data.dir={folder}", "--set", "data.resolution=32", "--dry-run"]) == 0
    assert "subset 'linked' [data.dir (2_linked)]: 1 images x 2 repeats" in capsys.readouterr().out


# ------------------------------------------------------------------ names that are not UTF-8


@pytest.fixture
def latin1_data(tmp_path):
    """A folder named `d\xe9` (bytes) holding `caf\xe9.png` with its caption, a good image, and a broken
    `bad\xff.png`."""
    folder = fs(tmp_path, b"d\xe9")
    write_image(folder / "good.png", caption="good, red")
    write_image(fs(folder, CAFE + b".png"), colour=(10, 200, 10), caption="cafe, green")
    fs(folder, b"bad\xff.png").write_bytes(b"not an image")
    return folder


def test_a_name_that_is_not_utf8_is_printed_escaped_never_a_unicode_error(latin1_data, tmp_path):
    result = strict_cli("train", "--set", f"data.dir={latin1_data}", "--set", "data.resolution=32", "--dry-run",
                        cwd=tmp_path)
    out, err = text(result.stdout), text(result.stderr)
    assert result.returncode == 0 and "Traceback" not in err, err
    assert "d\\udce9/bad\\udcff.png: not an image Pillow can read" in out
    assert "training images: 2, regularisation images: 0, skipped files: 1" in out


def test_training_and_resume_on_names_that_are_not_utf8(latin1_data, tmp_path, capsys):
    from safetensors import safe_open

    out_dir = tmp_path / "out"
    base = ["train", "--set", f"data.dir={latin1_data}", "--set", "data.resolution=32", "--set", "network.rank=2",
            "--set", f"output.dir={out_dir}", "--set", "output.log_with=tensorboard",
            "--set", "output.save_every_n_steps=1"]
    assert main([*base, "--set", "train.max_steps=1"]) == 0, capsys.readouterr().err
    with safe_open(str(out_dir / "lora.safetensors"), framework="pt") as f:
        dirs = json.loads(f.metadata()["ss_dataset_dirs"])
    assert dirs == {"d\\xe9": {"img_count": 2, "n_repeats": 1}}  # the byte shown as \xNN, valid UTF-8 text
    # the written config names the real folder (its bytes), so the same run resumes from it
    assert b"d\xe9" in (out_dir / "lora.config.toml").read_bytes()
    assert main([*base, "--set", "train.max_steps=2", "--set", "train.resume=latest"]) == 0, capsys.readouterr().err
    assert [json.loads(line)["step"] for line in (out_dir / "logs" / "metrics.jsonl").read_text().splitlines()
            if '"loss"' in line] == [1, 2]


def test_caption_tools_on_names_that_are_not_utf8(latin1_data, tmp_path):
    caption = fs(latin1_data, CAFE + b".txt")
    result = strict_cli("captions", "add-trigger", latin1_data, "sks", cwd=tmp_path)
    assert result.returncode == 0 and "Traceback" not in text(result.stderr), text(result.stderr)
    assert "changed 2 of 2 caption file(s)" in text(result.stdout)
    assert caption.read_text() == "sks, cafe, green"
    tags = strict_cli("captions", "tags", latin1_data, cwd=tmp_path)
    assert tags.returncode == 0 and "sks" in text(tags.stdout), text(tags.stderr)
    undo = strict_cli("captions", "undo", latin1_data, cwd=tmp_path)
    assert undo.returncode == 0, text(undo.stderr)
    assert "restored 2 caption file(s) from" in text(undo.stdout)
    assert caption.read_text() == "cafe, green"


def test_dataset_report_on_names_that_are_not_utf8(latin1_data, tmp_path):
    target = tmp_path / "report.html"
    result = strict_cli("dataset-report", latin1_data, "--no-bucket", "--resolution", "32", "-o", target, "--json",
                        cwd=tmp_path)
    assert result.returncode == 0 and "Traceback" not in text(result.stderr), text(result.stderr)
    summary = json.loads(text(result.stdout))
    assert summary["images"] == 2 and summary["skipped"] == 1
    assert target.is_file()


def test_the_studio_lists_names_that_are_not_utf8_as_skipped(latin1_data, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from sd_lora.studio.app import Settings, create_app

    root = tmp_path
    weird = fs(root, b"w\xe9ird")
    weird.mkdir()
    (root / "plain").mkdir()
    write_image(root / "plain" / "a.png")
    os.symlink("loop.png", root / "plain" / "loop.png")
    settings = Settings(data_roots=[root], home=tmp_path / "home", start_queue=False)
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        top = client.get("/datasets", params={"path": root.name})
        assert top.status_code == 200
        assert "whose name is not UTF-8 text" in top.text and "d\\xe9" in top.text and "w\\xe9ird" in top.text
        assert f'href="/datasets?path={root.name}/plain"' in top.text
        inside = client.get("/datasets", params={"path": f"{root.name}/plain", "resolution": 32})
        assert inside.status_code == 200
        assert "loop.png: a symbolic link loop" in inside.text


# ------------------------------------------------------------------ weights that do not fill the model


@pytest.fixture(scope="module")
def tiny_model(tiny_models):
    return tiny_models / "tiny0"


@pytest.mark.parametrize("component, weights", [("unet", "diffusion_pytorch_model.safetensors"),
                                                ("vae", "diffusion_pytorch_model.safetensors")])
def test_a_diffusers_folder_whose_weights_miss_tensors_is_one_error(tiny_model, tmp_path, capsys, component, weights):
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    file = model / component / weights
    tensors = load_file(str(file))
    dropped = sorted(tensors)[:2]
    for key in dropped:
        del tensors[key]
    save_file(tensors, str(file), metadata={"format": "pt"})
    write_image(tmp_path / "data" / "a.png")
    code = main(["train", "--set", f"model.pretrained={model}", "--set", f"data.dir={tmp_path / 'data'}",
                 "--set", "data.resolution=32", "--set", "train.max_steps=1", "--set", f"output.dir={tmp_path / 'o'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("sd-lora train: error:") == 1, err
    assert f"{file} lacks weights of the {component}: " in err and all(key in err for key in dropped), err
    assert "re-download or re-convert it" in err
    assert not (tmp_path / "o" / "lora.safetensors").exists()


def test_the_integrity_check_names_only_unfilled_modules():
    import torch

    from sd_lora.errors import SdLoraError
    from sd_lora.models.integrity import require_filled, unfilled

    whole = torch.nn.Linear(2, 2)
    with torch.device("meta"):
        hollow = torch.nn.Linear(2, 2)
    assert unfilled(whole) == [] and unfilled(hollow) == ["weight", "bias"]
    require_filled({"text_encoder": whole, "tokenizer": object()}, "m")  # non-modules are not models
    with pytest.raises(SdLoraError, match=r"f\.safetensors lacks weights of the unet: weight, bias"):
        require_filled({"text_encoder": whole, "unet": hollow}, "m", {"unet": "f.safetensors"})


# ------------------------------------------------------------------ a saved state with a file cut short


@pytest.fixture(scope="module")
def two_states(tmp_path_factory):
    root = tmp_path_factory.mktemp("r2c_states")
    for i in range(2):
        write_image(root / "data" / f"{i}.png", colour=(90 * i, 50, 50))
    args = ["train", "--set", f"data.dir={root / 'data'}", "--set", "data.resolution=32", "--set", "network.rank=2",
            "--set", f"output.dir={root / 'run'}", "--set", "output.log_with=none", "--set", "output.save_every_n_steps=1",
            "--set", "train.max_steps=2"]
    assert main(args) == 0
    return root, args


@pytest.mark.parametrize("name", ["adapter_unet.safetensors", "optimizer.bin", "random_states_0.pkl",
                                  "custom_checkpoint_0.pkl", "missing random_states_0.pkl"])
def test_a_state_with_a_file_cut_short_is_one_error_naming_it(two_states, tmp_path, capsys, name):
    root, args = two_states
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    state = run / "checkpoints" / "step-000002"
    file = state / name.removeprefix("missing ")
    if name.startswith("missing "):
        file.unlink()
    else:
        os.truncate(file, file.stat().st_size // 2)
    args = [a.replace(str(root / "run"), str(run)) for a in args]
    code = main([*args, "--set", "train.max_steps=3", "--set", "train.resume=latest"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.count("sd-lora train: error:") == 1, err
    assert f"the state {state} is damaged" in err and f"  {file.name}: " in err
    assert f"set train.resume to another state (e.g. {run / 'checkpoints' / 'step-000001'})" in err
    assert "start fresh: remove train.resume" in err
    assert not any(run.glob("*step000003*"))


def test_the_earlier_state_named_in_the_error_resumes(two_states, tmp_path, capsys):
    root, args = two_states
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    adapter = run / "checkpoints" / "step-000002" / "adapter_unet.safetensors"
    os.truncate(adapter, 100)
    args = [a.replace(str(root / "run"), str(run)) for a in args]
    earlier = run / "checkpoints" / "step-000001"
    assert main([*args, "--set", "train.max_steps=3", "--set", f"train.resume={earlier}"]) == 0, \
        capsys.readouterr().err
    assert (run / "checkpoints" / "step-000003").is_dir()
