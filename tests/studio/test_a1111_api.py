"""The AUTOMATIC1111-compatible API, used through the `webuiapi` client exactly as its README shows, against a
real `sd-lora studio` server on 127.0.0.1 with the tiny built-in model."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest

webuiapi = pytest.importorskip("webuiapi")


@pytest.fixture
def api(start_server, tmp_path, lora_dir):
    server = start_server(["--home", str(tmp_path / "home"), "--lora-dir", str(lora_dir)])
    return webuiapi.WebUIApi(host="127.0.0.1", port=server.port)


def test_txt2img_with_a_lora_tag(api):
    assert api.util_get_model_names() == ["builtin:tiny"]
    api.util_set_model("builtin:tiny")
    assert api.util_get_current_model() == "builtin:tiny"
    assert "Euler a" in api.util_get_sampler_names() and "DPM++ 2M Karras" in api.util_get_sampler_names()
    assert sorted(lora["name"] for lora in api.get_loras()) == ["night", "night_neg"]

    result = api.txt2img(prompt="a night sky <lora:night:0.8>", negative_prompt="blurry", seed=1003, cfg_scale=7,
                         sampler_index="Euler a", steps=3, width=64, height=48)
    assert result.image.size == (64, 48)
    assert result.info["seed"] == 1003 and result.info["all_seeds"] == [1003]
    infotext = result.info["infotexts"][0]
    assert infotext.startswith("a night sky <lora:night:0.8>\nNegative prompt: blurry\n")
    assert "Steps: 3" in infotext and "Sampler: Euler a" in infotext and "Seed: 1003" in infotext
    assert "Lora hashes: \"night: " in infotext or "Lora hashes: night: " in infotext

    plain = api.txt2img(prompt="a night sky", negative_prompt="blurry", seed=1003, cfg_scale=7, sampler_index="Euler a",
                        steps=3, width=64, height=48)
    again = api.txt2img(prompt="a night sky <lora:night:0.8>", negative_prompt="blurry", seed=1003, cfg_scale=7,
                        sampler_index="Euler a", steps=3, width=64, height=48)
    with_lora, without, repeat = (np.asarray(r.image, dtype=np.int16) for r in (result, plain, again))
    assert np.array_equal(with_lora, repeat)  # same seed, same image
    assert np.abs(with_lora - without).max() > 0  # the LoRA changes it

    info = api.png_info(result.image)
    assert info.info == infotext
    assert info.json["parameters"]["Seed"] == "1003" and info.json["parameters"]["Prompt"] == "a night sky <lora:night:0.8>"


def test_batches_seeds_and_errors(api):
    result = api.txt2img(prompt="stars", seed=7, steps=2, width=32, height=32, batch_size=2, sampler_name="DPM++ 2M",
                         scheduler="karras")
    assert len(result.images) == 2 and result.info["all_seeds"] == [7, 8]
    assert "Sampler: DPM++ 2M Karras" in result.info["infotexts"][0]
    with pytest.raises(RuntimeError) as e:
        api.txt2img(prompt="x <lora:nothere:1>", steps=2, width=32, height=32)
    assert e.value.args[0] == 400 and "nothere" in e.value.args[1] and "night" in e.value.args[1]
    with pytest.raises(RuntimeError) as e:  # a tag is a name among the studio's adapters, never a path
        api.txt2img(prompt="x <lora:/etc/passwd:1>", steps=2, width=32, height=32)
    assert e.value.args[0] == 400
    with pytest.raises(RuntimeError) as e:
        api.txt2img(prompt="x", steps=2, width=30, height=32)
    assert e.value.args[0] == 400 and "multiple of 8" in e.value.args[1]
    response = api.session.post(f"{api.baseurl}/options", json={"sd_model_checkpoint": "other.safetensors"})
    assert response.status_code == 400 and "not one of the studio's models" in response.json()["error"]
    response = api.session.post(f"{api.baseurl}/png-info", json={"image": base64.b64encode(b"no image").decode()})
    assert response.status_code == 400 and "not a readable image" in response.json()["error"]


def test_the_generate_page_with_two_adapters(make_client, lora_dir):
    c = make_client(lora_dirs=[lora_dir])
    page = c.get("/generate").text
    assert 'name="lora:night"' in page and 'name="lora:night_neg"' in page
    r = c.post("/generate", data={"prompt": "a night sky", "seed": "5", "steps": "2", "width": "32", "height": "32",
                                  "lora:night": "0.7", "lora:night_neg": "0.3", "sampler": "Euler"})
    assert r.status_code == 200 and 'alt="generated image 1"' in r.text
    assert "&lt;lora:night:0.7&gt; &lt;lora:night_neg:0.3&gt;" in r.text and "Sampler: Euler," in r.text
    r = c.post("/generate", data={"prompt": "x", "steps": "0", "lora:night": "1"})
    assert r.status_code == 422 and "steps: must be between 1 and 150" in r.text
    r = c.post("/generate", data={"prompt": "x", "steps": "2", "model": "/etc/passwd"})
    assert r.status_code == 400 and "not one of the studio&#39;s models" in r.text
