"""The queue: runs as `sd-lora train` subprocesses, live progress, stop -> resume, order, restarts."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path

import pytest
from safetensors.torch import load_file

from sd_lora.studio.app import studio_of
from sd_lora.studio.runner import run_dir
from tests.studio.conftest import make_dataset, tiny_run_form, wait_for


def _status(c, run_id: int) -> dict:
    return c.get(f"/api/runs/{run_id}").json()


def _wait_status(c, run_id: int, statuses: tuple[str, ...], timeout: float = 150) -> dict:
    return wait_for(lambda: (s := _status(c, run_id))["status"] in statuses and s, timeout,
                    f"run {run_id} to be {'/'.join(statuses)} (log: {c.get(f'/api/runs/{run_id}').json()['log'][-800:]})",
                    interval=0.2)


def test_run_from_the_form_reports_progress_samples_and_files(make_client, data_root):
    c = make_client([data_root], start_queue=True)
    form = tiny_run_form(steps=4, **{"sample.every_n_steps": "2", "sample.prompts": "a red circle", "sample.steps": "2",
                                     "data.validation_split": "0.34", "data.validation_every_n_steps": "2"})
    r = c.post("/runs/new", data=form, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/runs/1"
    s = _wait_status(c, 1, ("done", "failed"))
    assert s["status"] == "done", s["log"][-2000:]
    out = run_dir(studio_of(c.app).home, 1) / "output"
    metrics = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert s["step"] == 4 and s["total"] == 4
    assert s["losses"] == [[m["step"], m["loss"]] for m in metrics if "loss" in m]
    assert s["validation"] == [[m["step"], m["validation_loss"]] for m in metrics if "validation_loss" in m]
    assert [v[0] for v in s["validation"]] == [2, 4]
    assert [e["step"] for e in s["samples"]] == [0, 2, 4]
    assert s["samples"][1:] == [{"step": 2, "images": ["samples/step000002.png"]},
                                {"step": 4, "images": ["samples/step000004.png"]}]
    # step 0: the sample prompt on the bare base model, same seed and size as the training samples
    (baseline,) = s["samples"][0]["images"]
    from PIL import Image

    from sd_lora.inference import read_parameters

    with Image.open(out / baseline) as im:
        assert im.size == (32, 32)
    parameters = read_parameters(out / baseline)
    assert parameters.startswith("a red circle\n") and "Seed: 0" in parameters and "Lora" not in parameters
    names = [name for name, _ in s["files"]]
    assert "shapes.safetensors" in names and "logs/metrics.jsonl" in names
    assert c.get("/runs/1/files/shapes.safetensors").content == (out / "shapes.safetensors").read_bytes()
    grid = c.get("/runs/1/files/samples/step000004.png")
    assert grid.status_code == 200 and grid.headers["content-type"] == "image/png"
    page = c.get("/runs/1").text
    assert '<polyline class="loss"' in page and 'class="val"' in page and "step000002.png" in page and "(baseline: the base model)" in page
    runs_page = c.get("/runs").text
    assert '<a href="/runs/1">shapes</a>' in runs_page and '<td class="status">done</td>' in runs_page
    # the finished run's adapter is listed for generation, with inspect's facts
    adapters = c.get("/adapters").text
    row = adapters[adapters.index('<tr data-adapter="shapes-run1">'):]
    row = row[:row.index("</tr>")]
    assert '<td class="family">sd1</td>' in row and '<td class="rank">4 / 4.0</td>' in row
    assert '<td class="modules">unet 32</td>' in row
    from sd_lora.inference import lora_hash

    assert f"<code>{lora_hash(out / 'shapes.safetensors')}</code>" in row  # the hash A1111 shows (AutoV3)
    assert c.get("/generate", params={"lora": "shapes-run1"}).text.count('value="1"') >= 2  # slider and box at 1


def test_stop_then_resume_gives_the_same_adapter_as_an_uninterrupted_run(make_client, data_root):
    c = make_client([data_root], start_queue=True)
    steps = 24
    form = tiny_run_form(steps=steps)
    c.post("/runs/new", data=form)
    home = studio_of(c.app).home
    metrics = run_dir(home, 1) / "output" / "logs" / "metrics.jsonl"
    wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 3, 120, "run 1 to log 3 steps",
             interval=0.02)
    assert c.post("/runs/1/stop", headers={"accept": "application/json"}).json()["status"] == "stopping"
    s = _wait_status(c, 1, ("stopped", "done", "failed"))
    assert s["status"] == "stopped", f"the run ended as {s['status']} before the stop arrived: {s['log'][-1500:]}"
    assert 3 <= s["step"] < steps and "state is saved" in s["message"]
    assert not (run_dir(home, 1) / "output" / "shapes.safetensors").exists()
    assert c.post("/runs/1/resume", headers={"accept": "application/json"}).json()["status"] == "queued"
    s = _wait_status(c, 1, ("done", "failed"))
    assert s["status"] == "done" and "resumed from" in s["log"]
    c.post("/runs/new", data=form)  # the same config, never interrupted
    assert _wait_status(c, 2, ("done", "failed"))["status"] == "done"
    resumed = load_file(run_dir(home, 1) / "output" / "shapes.safetensors")
    straight = load_file(run_dir(home, 2) / "output" / "shapes.safetensors")
    assert resumed.keys() == straight.keys() and len(resumed) > 0
    for key in straight:
        assert (resumed[key] == straight[key]).all(), key


def test_queue_order_cancel_and_failures(make_client, data_root, tmp_path):
    c = make_client([data_root])
    for name in ("first", "second", "third"):
        c.post("/runs/new", data={**tiny_run_form(), "output.name": name})
    studio = studio_of(c.app)
    assert [r.name for r in studio.store.queued()] == ["first", "second", "third"]
    c.post("/runs/3/up")
    c.post("/runs/3/up")
    c.post("/runs/3/up")  # already first: stays first
    c.post("/runs/1/down")
    assert [r.name for r in studio.store.queued()] == ["third", "second", "first"]
    c.post("/runs/2/stop")
    assert studio.store.get(2).status == "cancelled"
    assert [r.name for r in studio.store.queued()] == ["third", "first"]
    r = c.post("/runs/2/up")
    assert r.status_code == 400 and "only queued runs can be moved" in r.text
    c.post("/runs/2/resume")
    assert [r.name for r in studio.store.queued()] == ["third", "first", "second"]
    page = c.get("/runs").text
    assert page.index("third") < page.index("first") < page.index("second")
    assert c.post("/runs/1/explode").status_code == 404


def test_a_failing_run_shows_the_error(make_client, data_root):
    (data_root / "empty").mkdir()
    c = make_client([data_root], start_queue=True)
    c.post("/runs/new", data={**tiny_run_form(), "data.dir": "data/empty"})
    s = _wait_status(c, 1, ("done", "failed"))
    assert s["status"] == "failed" and "error:" in s["message"] and "data/empty" in s["message"].replace(str(data_root), "data")
    assert "Traceback" not in s["log"]


def _post_form(url: str, form: dict) -> int:
    from urllib.parse import urlencode

    req = urllib.request.Request(url, data=urlencode(form).encode(), method="POST")

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    try:
        return urllib.request.build_opener(NoRedirect).open(req, timeout=30).status
    except urllib.error.HTTPError as e:
        return e.code


def _get_json(url: str):
    return json.loads(urllib.request.urlopen(url, timeout=30).read())


def test_the_queue_survives_a_killed_studio(start_server, tmp_path):
    """Two runs queued, the studio killed (SIGKILL) mid-run, started again: both finish, the first resumed."""
    make_dataset(tmp_path / "data" / "shapes")
    home = tmp_path / "home"
    args = ["--home", str(home), "--data-root", str(tmp_path / "data")]
    server = start_server(args)
    for name in ("one", "two"):
        assert _post_form(server.url + "/runs/new", {**tiny_run_form(steps=24), "output.name": name}) == 303
    metrics = run_dir(home, 1) / "output" / "logs" / "metrics.jsonl"
    wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 3, 120, "run 1 to log 3 steps",
             interval=0.02)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()
    # the trainer got SIGINT from the kernel when its parent died: it saves its state and exits by itself
    state_dir = run_dir(home, 1) / "output" / "checkpoints"
    wait_for(lambda: state_dir.is_dir() and any(state_dir.iterdir()), 60, "the killed studio's run to save its state")
    again = start_server(args)
    runs = wait_for(lambda: (r := _get_json(again.url + "/api/runs")) and all(x["status"] in ("done", "failed") for x in r)
                    and r, 240, "both runs to finish after the restart", interval=0.5)
    assert sorted((x["name"], x["status"]) for x in runs) == [("one", "done"), ("two", "done")]
    first = _get_json(again.url + "/api/runs/1")
    assert "resumed from" in first["log"] and first["step"] == 24
    assert (run_dir(home, 2) / "output" / "two.safetensors").is_file()
