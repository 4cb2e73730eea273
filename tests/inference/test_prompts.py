"""Prompt tags, --lora arguments, seeds and prompt files (no models)."""

from __future__ import annotations

import json

import pytest

from sd_lora.errors import SdLoraError
from sd_lora.inference import AdapterSet, LoraRef, parse_lora_arg, parse_prompt, parse_seeds, read_prompt_file


def test_several_tags_are_stripped_and_parsed():
    prompt, refs = parse_prompt("a castle, <lora:style:0.7>, at night <lora:detail:-0.25> <LORA:Ink>")
    assert prompt == "a castle, at night"
    assert refs == [LoraRef("style", 0.7), LoraRef("detail", -0.25), LoraRef("Ink", 1.0)]


def test_missing_weight_means_one_and_no_tags_keep_the_prompt():
    assert parse_prompt("<lora:a>") == ("", [LoraRef("a", 1.0)])
    assert parse_prompt("a plain prompt") == ("a plain prompt", [])


def test_bad_weight_is_a_clear_error():
    with pytest.raises(SdLoraError, match="not a number"):
        parse_prompt("x <lora:a:heavy>")


def test_unknown_name_is_a_clear_error(tmp_path):
    (tmp_path / "known.safetensors").write_bytes(b"")
    adapters = AdapterSet(pipe=None, lora_dir=tmp_path)
    assert adapters.resolve("known") == (tmp_path / "known.safetensors").resolve()
    with pytest.raises(SdLoraError, match="'missing' not found.*known"):
        adapters.resolve("missing")


def test_lora_argument_with_and_without_scale():
    assert parse_lora_arg("style.safetensors:0.5") == LoraRef("style.safetensors", 0.5)
    assert parse_lora_arg("style") == LoraRef("style", 1.0)
    assert parse_lora_arg("C:\\loras\\x.safetensors") == LoraRef("C:\\loras\\x.safetensors", 1.0)


def test_seed_forms():
    assert parse_seeds("42") == [42]
    assert parse_seeds("3-6") == [3, 4, 5, 6]
    assert parse_seeds("1,5-6,9") == [1, 5, 6, 9]
    with pytest.raises(SdLoraError, match="--seed"):
        parse_seeds("6-3")


def test_plain_and_jsonl_prompt_files(tmp_path):
    plain = tmp_path / "p.txt"
    plain.write_text("# comment\na cat\n\na dog\n")
    assert [s.prompt for s in read_prompt_file(plain)] == ["a cat", "a dog"]
    jsonl = tmp_path / "p.jsonl"
    rows = [{"prompt": "a cat", "seed": 3, "steps": 5, "guidance": 2.5, "width": 64, "height": 48,
             "negative_prompt": "blur", "loras": ["style:0.5", {"name": "ink", "weight": 2}]},
            {"prompt": "a dog", "loras": {"style": 0.25}}]
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    first, second = read_prompt_file(jsonl)
    assert (first.seed, first.steps, first.guidance, first.width, first.height, first.negative_prompt) == \
        (3, 5, 2.5, 64, 48, "blur")
    assert first.loras == [LoraRef("style", 0.5), LoraRef("ink", 2.0)]
    assert second.loras == [LoraRef("style", 0.25)] and second.seed is None


def test_jsonl_unknown_field_is_reported_with_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a", "sampler": "x"}\n')
    with pytest.raises(SdLoraError, match=r"p.jsonl:1: unknown field\(s\) \['sampler'\]"):
        read_prompt_file(path)
