"""The new-run form: generated from the schema, the loader's own messages by each field, presets, TOML in and out."""

from __future__ import annotations

import dataclasses
import html
import re
import sys
import typing

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from sd_lora.config.load import ConfigError, load_config
from sd_lora.config.schema import Config
from sd_lora.studio import forms
from sd_lora.studio.app import studio_of
from tests.studio.conftest import REPO, tiny_run_form


def _field_problems(page: str) -> dict[str, list[str]]:
    found = {}
    for key, body in re.findall(r'<div class="field invalid" data-key="([^"]+)">(.*?)</div>\s*(?=<div class="field|</fieldset)',
                                page, flags=re.S):
        found[key] = [html.unescape(p) for p in re.findall(r'<div class="problem">(.*?)</div>', body + "</div>")]
    return found


def test_every_schema_field_has_a_form_field():
    keys = {f.key for _, fields in forms.form_sections() for f in fields}
    for section in dataclasses.fields(Config):
        hints = typing.get_type_hints(section.default_factory)
        for f in dataclasses.fields(section.default_factory):
            key = f"{section.name}.{f.name}"
            if key in forms.MANAGED or key == forms.SUBSETS_KEY:
                assert key not in keys
            else:
                assert key in keys, key
    assert "output.dir" not in keys  # each run writes into its own folder


def test_the_form_shows_the_messages_validate_prints_next_to_their_fields(make_client, data_root):
    c = make_client([data_root])
    bad = {"train.max_steps": "abc", "network.rank": "0", "train.optimizer": "adamw9", "sample.width": "30",
           "network.alpha": "nan"}
    r = c.post("/runs/new", data={**tiny_run_form(), **bad, "action": "validate"})
    assert r.status_code == 422
    shown = _field_problems(r.text)
    with pytest.raises(ConfigError) as e:  # what `sd-lora train --validate --set ...` reports for the same values
        load_config(None, ["data.dir=x"] + [f"{k}={v}" for k, v in bad.items()])
    # the CLI marks values that came from --set; the form's values are the form's, so that mark is not shown there
    expected = {p.split(":", 1)[0]: p.removesuffix(" (given with --set)") for p in e.value.problems}
    assert set(expected) == set(bad)
    for key, message in expected.items():
        assert message in shown.get(key, []), (key, message, shown.get(key))
    assert c.get("/api/runs").json() == []  # nothing was queued


def test_a_missing_data_folder_is_named(make_client, data_root):
    c = make_client([data_root])
    r = c.post("/runs/new", data={"action": "validate"})
    assert r.status_code == 422 and "data.dir: choose the folder of training images" in r.text


def test_validate_says_ok_and_queue_stores_the_run(make_client, data_root):
    c = make_client([data_root])
    r = c.post("/runs/new", data={**tiny_run_form(), "action": "validate"})
    assert r.status_code == 200 and "config OK" in r.text
    r = c.post("/runs/new", data=tiny_run_form(), follow_redirects=False)
    assert r.status_code == 303
    run = studio_of(c.app).store.get(1)
    assert run.status == "queued" and run.name == "shapes"
    stored = tomllib.loads(run.config)
    assert stored["data"]["dir"] == "data/shapes" and stored["train"]["max_steps"] == 6
    assert "dir" not in stored.get("output", {})


def test_checkbox_pairs_and_optional_fields(make_client, data_root):
    c = make_client([data_root])
    # a browser sends the hidden "false" and, when ticked, the checkbox's "true" after it
    form = list(tiny_run_form().items()) + [("network.dora", "false"), ("network.dora", "true"),
                                            ("train.gradient_checkpointing", "false"), ("train.max_epochs", "")]
    r = c.post("/runs/new", data=None, content="&".join(f"{k}={v}" for k, v in form).encode(),
               headers={"content-type": "application/x-www-form-urlencoded"}, follow_redirects=False)
    assert r.status_code == 303
    stored = tomllib.loads(studio_of(c.app).store.get(1).config)
    assert stored["network"]["dora"] is True and "max_epochs" not in stored["train"]


@pytest.mark.parametrize("preset", sorted(p.stem for p in (REPO / "train_configs").glob("*.toml")))
def test_every_preset_loads_into_the_form(make_client, preset):
    c = make_client([REPO / "datasets_example"])
    r = c.get("/runs/new", params={"preset": preset})
    assert r.status_code == 200 and f"loaded the preset {preset}" in r.text
    data = tomllib.loads((REPO / "train_configs" / f"{preset}.toml").read_text())
    if "max_steps" in data.get("train", {}):
        assert re.search(rf'name="train.max_steps" value="{data["train"]["max_steps"]}"', r.text)


def test_the_tiny_preset_maps_its_dataset_under_the_root(make_client):
    c = make_client([REPO / "datasets_example"])
    r = c.get("/runs/new", params={"preset": "tiny"})
    assert 'name="data.dir" value="datasets_example/night_shapes"' in r.text
    assert c.get("/runs/new", params={"preset": "nope"}).status_code == 404


def test_toml_export_then_import_round_trips(make_client, data_root):
    c = make_client([data_root])
    form = tiny_run_form(**{"sample.prompts": "a red circle\na blue square", "network.dora": "true",
                            "data.subsets": '[[data.subsets]]\ndir = "data/shapes"\nnum_repeats = 3\n'})
    r = c.post("/runs/new", data={**form, "action": "export"})
    assert r.status_code == 200 and r.headers["content-disposition"] == 'attachment; filename="shapes.toml"'
    exported = tomllib.loads(r.text)
    assert exported["sample"]["prompts"] == ["a red circle", "a blue square"]
    assert exported["data"]["subsets"] == [{"dir": "data/shapes", "num_repeats": 3}]
    assert exported["network"]["dora"] is True and exported["train"]["max_steps"] == 6
    r = c.post("/runs/import", data={"toml": r.text})
    assert r.status_code == 200 and "imported the TOML" in r.text and not _field_problems(r.text)
    assert 'name="train.max_steps" value="6"' in r.text
    assert "a red circle\na blue square</textarea>" in r.text
    assert "num_repeats = 3" in r.text
    r = c.post("/runs/import", files={"file": ("x.toml", b"[train]\nmax_steps = 'many'\n[data]\ndir = 'data/shapes'\n")})
    assert "train.max_steps: expected integer, got &#39;many&#39;" in r.text
    r = c.post("/runs/import", data={"toml": "[train\n"})
    assert r.status_code == 400 and "not valid TOML" in r.text
