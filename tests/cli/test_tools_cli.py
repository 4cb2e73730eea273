"""The tool subcommands: output, --json, and user mistakes as one-line errors (exit 2, no traceback)."""

from __future__ import annotations

import json

import pytest
import torch

from sd_lora.cli.main import main
from tests.tools.conftest import save_random_adapter, tiny


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_tools")
    base = tiny("sd1")
    base.save_pretrained(str(d / "base"))
    with torch.no_grad():
        layer = dict(base.unet.named_modules())["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q"]
        layer.weight += 0.1 * torch.randn(layer.weight.shape[0], 2) @ torch.randn(2, layer.weight.shape[1])
    base.save_pretrained(str(d / "tuned"))
    a = save_random_adapter(tiny("sd1"), d / "a.safetensors", rank=8, seed=1)
    b = save_random_adapter(tiny("sd1"), d / "b.safetensors", rank=4, seed=2, text_encoder=False)
    return d, a, b


def test_merge_resize_inspect(setup, tmp_path, capsys):
    d, a, b = setup
    m = tmp_path / "m.safetensors"
    assert main(["merge", f"{a}:0.7", f"{b}:0.3", "-o", str(m)]) == 0
    assert "concat" in capsys.readouterr().out and m.is_file()
    r = tmp_path / "r.safetensors"
    assert main(["resize", str(m), "-o", str(r), "--dynamic", "sv_ratio", "--param", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rule"]["dynamic"] == "sv_ratio" and len(out["modules"]) == out["summary"]["modules"] > 0
    assert {"module", "old_rank", "new_rank", "retained"} <= set(out["modules"][0])
    assert main(["resize", str(m), "-o", str(tmp_path / "r2.safetensors"), "--rank", "4"]) == 0
    text = capsys.readouterr().out
    assert "retained" in text and "mean" in text and "MiB ->" in text


def test_extract_and_bake(setup, tmp_path, capsys):
    d, a, _ = setup
    x = tmp_path / "x.safetensors"
    assert main(["extract", "--base", str(d / "base"), "--tuned", str(d / "tuned"), "-o", str(x), "--rank", "2"]) == 0
    out = capsys.readouterr().out
    assert "unet 1 extracted" in out and "text_encoder 0 extracted" in out
    assert main(["bake", "--model", str(d / "base"), "--lora", f"{a}:0.8", "--lora", f"{x}:1", "-o",
                 str(tmp_path / "baked")]) == 0
    assert (tmp_path / "baked" / "model_index.json").is_file()
    # single-file checkpoints in the original layout work as extraction inputs too
    from sd_lora.models.load import load_pipeline
    from sd_lora.models.families.unet_single_file import save_single_file

    for name in ("base", "tuned"):
        save_single_file(load_pipeline(str(d / name))[0], tmp_path / f"{name}.safetensors", "sd1")
    x2 = tmp_path / "x2.safetensors"
    assert main(["extract", "--base", str(tmp_path / "base.safetensors"),
                 "--tuned", str(tmp_path / "tuned.safetensors"), "-o", str(x2), "--rank", "2"]) == 0
    from safetensors.torch import load_file

    one, two = load_file(str(x)), load_file(str(x2))
    assert set(one) == set(two)


@pytest.mark.parametrize("argv, message", [
    (["merge", "missing.safetensors", "-o", "o.safetensors"], "no such file"),
    (["resize", "{a}", "-o", "o.safetensors", "--rank", "99"], "above the input's rank"),
    (["resize", "{a}", "-o", "o.safetensors", "--dynamic", "sv_fro", "--param", "2"], "out of range"),
    (["resize", "{a}", "-o", "o.safetensors", "--dynamic", "sv_fro"], "needs --param"),
    (["resize", "{a}", "-o", "{a}", "--rank", "2"], "also an input"),
    (["extract", "--base", "nowhere", "--tuned", "nowhere", "-o", "o.safetensors", "--rank", "2"], "nowhere"),
    (["bake", "--model", "missing.safetensors", "--lora", "{a}", "-o", "o.safetensors"], "missing.safetensors"),
])
def test_user_mistakes_are_one_line_errors(setup, tmp_path, monkeypatch, capsys, argv, message):
    d, a, _ = setup
    monkeypatch.chdir(tmp_path)
    assert main([x.format(a=a) for x in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.startswith(f"sd-lora {argv[0]}: error:")
    assert not list(tmp_path.iterdir())
