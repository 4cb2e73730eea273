"""End to end in a real headless Chromium (Debian's `chromium`, driven by Playwright): edit a caption, start a
run on builtin:tiny from the form, watch it finish with its loss chart and samples, generate with two adapters.
Screenshots of each page are saved under the test's tmp folder (and into $SD_LORA_SCREENSHOTS when set, which
scripts/studio_screenshots.sh uses for the README)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = os.environ.get("SD_LORA_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")

from tests.studio.conftest import make_dataset  # noqa: E402


@pytest.fixture
def browser_page(tmp_path):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(30_000)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        yield page, errors
        browser.close()


def _shot(page, tmp_path: Path, name: str, full_page: bool = True) -> Path:
    folder = tmp_path / "screenshots"
    folder.mkdir(exist_ok=True)
    path = folder / f"studio_{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    extra = os.environ.get("SD_LORA_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / path.name)
    return path


def test_caption_run_and_generate_in_a_browser(browser_page, start_server, tmp_path, lora_dir):
    page, errors = browser_page
    data = tmp_path / "data"
    make_dataset(data / "shapes")
    server = start_server(["--home", str(tmp_path / "home"), "--data-root", str(data), "--lora-dir", str(lora_dir)])
    url = server.url

    # datasets: browse to the folder, edit a caption in place
    page.goto(url + "/datasets")
    page.click("main a:text-is('data')")
    page.click("a:text-is('shapes')")
    page.wait_for_selector("#plan")
    page.fill('[name="resolution"]', "32")  # the default 512 px plan skips these 32 px images, and says so
    page.click("button:text-is('Plan')")
    page.wait_for_url("**resolution=32**")
    assert "6 images x 1 repeats = 6 samples" in page.inner_text("#plan")
    card = page.locator('.image[data-path="data/shapes/000.png"]')
    card.locator("textarea").fill("shape, blue, night sky, edited in the browser")
    card.locator("button.save-caption").click()
    card.locator(".saved.ok").wait_for()
    assert (data / "shapes" / "000.txt").read_text(encoding="utf-8") == "shape, blue, night sky, edited in the browser\n"
    page.evaluate("window.scrollTo(0, 0)")
    _shot(page, tmp_path, "datasets")

    # a new run from the form: a bad value first (the loader's message by the field), then a good one
    page.goto(url + "/runs/new")
    page.fill('[name="data.dir"]', "data/shapes")
    page.fill('[name="data.resolution"]', "32")
    page.fill('[name="data.validation_split"]', "0.34")
    page.fill('[name="data.validation_every_n_steps"]', "3")
    page.fill('[name="network.rank"]', "4")
    page.fill('[name="network.alpha"]', "4")
    page.fill('[name="train.max_steps"]', "many")
    page.fill('[name="train.batch_size"]', "2")
    page.fill('[name="train.learning_rate"]', "0.001")
    page.fill('[name="train.log_every_n_steps"]', "1")
    page.click("#section-sample > legend")
    page.fill('[name="sample.every_n_steps"]', "3")
    page.fill('[name="sample.prompts"]', "a blue circle at night")
    page.fill('[name="sample.steps"]', "2")
    page.click("#section-output > legend")
    page.fill('[name="output.name"]', "shapes")
    page.select_option('[name="output.log_with"]', "none")
    page.click("#queue-run")
    problem = page.locator('.field[data-key="train.max_steps"] .problem')
    assert problem.inner_text() == "train.max_steps: expected integer, got 'many' (str)"
    page.locator('.field[data-key="train.max_steps"]').evaluate("e => e.scrollIntoView({block: 'start'})")
    page.evaluate("window.scrollBy(0, -120)")
    _shot(page, tmp_path, "new_run_error", full_page=False)
    page.fill('[name="train.max_steps"]', "6")
    page.click("#queue-run")
    page.wait_for_url(url + "/runs/1")
    page.wait_for_selector('body[data-run-status="running"], body[data-run-status="done"]', timeout=120_000)
    page.wait_for_selector('body[data-run-status="done"]', timeout=180_000)
    page.wait_for_function("document.querySelectorAll('#gallery img').length >= 3 && "
                           "[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth > 0)")
    assert page.locator("#chart svg polyline.loss").count() == 1
    assert page.locator("#chart svg circle.val").count() == 2
    assert page.inner_text("#p-step") == "6 / 6"
    assert page.locator("#resume-form").is_hidden() and page.locator("#stop-form").is_hidden()
    captions = page.locator("#gallery figcaption").all_inner_texts()
    assert captions == ["step 0 (baseline: the base model)", "step 3", "step 6"]
    assert page.locator('#files a[href="/runs/1/files/shapes.safetensors"]').count() == 1
    _shot(page, tmp_path, "run")

    page.goto(url + "/runs")
    assert page.locator("tr[data-run='1'] .status").inner_text() == "done"
    _shot(page, tmp_path, "queue")
    page.goto(url + "/adapters")
    assert page.locator("text=shapes-run1").count() == 1
    _shot(page, tmp_path, "adapters")

    # generate with two adapters at once
    page.goto(url + "/generate")
    page.fill("#prompt", "a night sky with a circle")
    page.fill('[name="lora:night"]', "0.8")
    page.fill('[name="lora:shapes-run1"]', "0.5")
    page.fill('[name="seed"]', "42")
    page.fill('[name="steps"]', "3")
    page.fill('[name="width"]', "64")
    page.fill('[name="height"]', "64")
    page.click("#generate")
    page.wait_for_selector("#results img", timeout=120_000)
    parameters = page.inner_text("#results .parameters")
    assert parameters.startswith("a night sky with a circle <lora:night:0.8> <lora:shapes:0.5>")
    assert "Seed: 42" in parameters and "Size: 64x64" in parameters
    _shot(page, tmp_path, "generate")
    assert errors == []  # no JavaScript errors on any page
