"""caption_folder with real (tiny) captioners: modes, trigger placement, batching, resume, outputs, the record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from sd_lora.captioning.captioner import CaptionerSettings, load_captioner
from sd_lora.captioning.run import PROGRESS_FILE, RECORD_FILE, CaptionJob, caption_folder, compose_caption
from sd_lora.errors import SdLoraError

COLOURS = {"a_red": (255, 0, 0), "b_blue": (0, 0, 255), "c_red": (250, 10, 0), "d_blue": (0, 10, 250),
           "e_red": (240, 0, 0)}
STRICT = dict(threshold=0.95, character_threshold=0.99)  # one tag per image: its colour


def _images(folder: Path, names=COLOURS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (24, 24), COLOURS[name]).save(folder / f"{name}.png")
    return folder


class Counting:
    """A real captioner that counts its batches and can stop the run after some (an interruption)."""

    def __init__(self, inner, fail_after: int | None = None):
        self.inner, self.fail_after, self.batches = inner, fail_after, []
        self.settings, self.files, self.device, self.dtype = inner.settings, inner.files, inner.device, inner.dtype

    def caption(self, images):
        if self.fail_after is not None and len(self.batches) == self.fail_after:
            raise KeyboardInterrupt
        self.batches.append(len(images))
        return self.inner.caption(images)


def _tagger(folder, **kw):
    return load_captioner(CaptionerSettings(backend="wd14", model=str(folder), **{**STRICT, **kw}))


def test_compose_caption_places_trigger_and_prefix():
    job = CaptionJob(Path("."), trigger="ohwx", prefix="1girl, solo")
    assert compose_caption("long hair, smile", None, job) == "ohwx, 1girl, solo, long hair, smile"
    assert compose_caption("smile, 1girl", None, job) == "ohwx, 1girl, solo, smile"
    sep = CaptionJob(Path("."), trigger="ohwx", keep_tokens_separator="|||")
    assert compose_caption("a dog, on grass", None, sep) == "ohwx ||| a dog, on grass"
    append = CaptionJob(Path("."), mode="append", trigger="ohwx", keep_tokens_separator="|||")
    assert compose_caption("smile, grass", "ohwx, me ||| smile", append) == "ohwx, me ||| smile, grass"
    plain_append = CaptionJob(Path("."), mode="append")
    assert compose_caption("red theme, smile", "A photo.", plain_append) == "A photo., red theme, smile"
    assert compose_caption("", "kept", plain_append) == "kept"


def test_skip_overwrite_append_and_batches(tmp_path, tiny_tagger_dir):
    folder = _images(tmp_path / "ds")
    (folder / "a_red.txt").write_text("my caption")
    (folder / "b_blue.txt").write_bytes(b"caf\xe9\r\n")  # Windows-1252, CRLF
    tagger = Counting(_tagger(tiny_tagger_dir, batch_size=2))
    report = caption_folder(CaptionJob(folder), tagger)
    assert tagger.batches == [2, 1]  # c, d | e: captioned images only
    assert sorted(p.name for p in report.kept) == ["a_red.png", "b_blue.png"]
    assert (folder / "a_red.txt").read_text() == "my caption"
    assert (folder / "c_red.txt").read_text() == "red theme"
    assert (folder / "d_blue.txt").read_text() == "blue theme"

    caption_folder(CaptionJob(folder, mode="append"), _tagger(tiny_tagger_dir))
    assert (folder / "a_red.txt").read_text() == "my caption, red theme"
    assert (folder / "b_blue.txt").read_bytes() == b"caf\xe9, blue theme\r\n"  # its encoding and line ending kept
    assert (folder / "c_red.txt").read_text() == "red theme"  # a tag it already has is not added twice

    caption_folder(CaptionJob(folder, mode="overwrite", trigger="ohwx"), _tagger(tiny_tagger_dir))
    assert (folder / "a_red.txt").read_text() == "ohwx, red theme"
    assert (folder / "b_blue.txt").read_bytes() == b"ohwx, blue theme\r\n"


def test_interrupted_overwrite_resumes_without_redoing_or_doubling(tmp_path, tiny_tagger_dir):
    folder = _images(tmp_path / "ds")
    for name in COLOURS:
        (folder / f"{name}.txt").write_text("old")
    job = CaptionJob(folder, mode="append")
    first = Counting(_tagger(tiny_tagger_dir, batch_size=2), fail_after=1)
    with pytest.raises(KeyboardInterrupt):
        caption_folder(job, first)
    assert (folder / "a_red.txt").read_text() == "old, red theme"  # the finished batch is on disk
    assert (folder / "c_red.txt").read_text() == "old"
    assert json.loads((folder / PROGRESS_FILE).read_text())["done"] == ["a_red.png", "b_blue.png"]
    assert not (folder / RECORD_FILE).exists()

    second = Counting(_tagger(tiny_tagger_dir, batch_size=2))
    report = caption_folder(job, second)
    assert second.batches == [2, 1] and report.resumed == 2
    assert (folder / "a_red.txt").read_text() == "old, red theme"  # not appended twice
    assert (folder / "e_red.txt").read_text() == "old, red theme"
    assert not (folder / PROGRESS_FILE).exists()


def test_progress_of_other_settings_is_ignored(tmp_path, tiny_tagger_dir):
    folder = _images(tmp_path / "ds", ["a_red", "b_blue"])
    (folder / PROGRESS_FILE).write_text(json.dumps({"settings": "someone-else", "done": ["a_red.png"]}))
    report = caption_folder(CaptionJob(folder, mode="overwrite"), _tagger(tiny_tagger_dir))
    assert len(report.written) == 2 and report.resumed == 0


def test_metadata_jsonl_output_keeps_other_fields(tmp_path, tiny_tagger_dir):
    folder = _images(tmp_path / "ds", ["a_red", "b_blue"])
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "a_red.png", "text": "x", "score": 7}) + "\n")
    caption_folder(CaptionJob(folder, mode="overwrite", output="jsonl", trigger="ohwx"), _tagger(tiny_tagger_dir))
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert rows == [{"file_name": "a_red.png", "text": "ohwx, red theme", "score": 7},
                    {"file_name": "b_blue.png", "text": "ohwx, blue theme"}]
    assert not (folder / "a_red.txt").exists()


def test_record_holds_what_reproduces_the_run(tmp_path, tiny_tagger_dir):
    folder = _images(tmp_path / "ds", ["a_red"])
    caption_folder(CaptionJob(folder, trigger="ohwx", prefix="solo"), _tagger(tiny_tagger_dir, blacklist=("x y",)))
    run = json.loads((folder / RECORD_FILE).read_text())["runs"][-1]
    assert run["captioner"]["backend"] == "wd14" and run["captioner"]["threshold"] == 0.95
    assert run["captioner"]["blacklist"] == ["x y"]
    assert run["model"]["location"] == str(tiny_tagger_dir.resolve())
    assert run["job"]["trigger"] == "ohwx" and run["keep_tokens"] == 2
    assert run["written"] == ["a_red.png"] and run["device"] == "cpu"
    assert CaptionerSettings.from_record(run["captioner"]) == _tagger(tiny_tagger_dir, blacklist=("x y",)).settings


def test_unreadable_image_is_reported_and_the_rest_captioned(tmp_path, tiny_tagger_dir):
    folder = _images(tmp_path / "ds", ["a_red"])
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    report = caption_folder(CaptionJob(folder), _tagger(tiny_tagger_dir))
    assert [p.name for p, _ in report.failed] == ["broken.png"]
    assert (folder / "a_red.txt").read_text() == "red theme" and not (folder / "broken.txt").exists()


def test_no_temporary_files_left_behind(tmp_path, tiny_tagger_dir):
    folder = _images(tmp_path / "ds")
    caption_folder(CaptionJob(folder), _tagger(tiny_tagger_dir, batch_size=3))
    assert not [p for p in folder.iterdir() if p.name.startswith(".") and p.suffix == ".tmp"]


def test_folder_errors(tmp_path, tiny_tagger_dir):
    with pytest.raises(SdLoraError, match="no images"):
        caption_folder(CaptionJob(tmp_path), _tagger(tiny_tagger_dir))
    with pytest.raises(SdLoraError, match="without commas"):
        CaptionJob(tmp_path, trigger="a, b")


@pytest.mark.parametrize("backend,fixture,prompt", [
    ("blip", "tiny_blip_dir", None), ("blip", "tiny_blip_dir", "a photo of"), ("blip", "tiny_blip2_dir", "a photo of"),
    ("florence2", "tiny_florence_dir", "<CAPTION>"), ("vlm", "tiny_llava_dir", "Describe the image"),
])
def test_generative_backends_batch_like_single_images(tmp_path, request, backend, fixture, prompt):
    """Batched captions equal one-at-a-time captions, greedy decoding repeats exactly, a prefix is kept."""
    folder = _images(tmp_path / "ds", ["a_red", "b_blue", "c_red"])
    settings = dict(backend=backend, model=str(request.getfixturevalue(fixture)), prompt=prompt, max_new_tokens=6,
                    num_beams=1)
    batched = Counting(load_captioner(CaptionerSettings(batch_size=3, **settings)))
    caption_folder(CaptionJob(folder, trigger="ohwx"), batched)
    assert batched.batches == [3]
    texts = [(folder / f"{n}.txt").read_text() for n in ("a_red", "b_blue", "c_red")]
    assert all(t.startswith("ohwx, ") and len(t) > len("ohwx, ") for t in texts)
    if prompt and backend == "blip":
        assert all(t.startswith("ohwx, a photo of") for t in texts)
    caption_folder(CaptionJob(folder, mode="overwrite", trigger="ohwx"),
                   load_captioner(CaptionerSettings(batch_size=1, **settings)))
    assert [(folder / f"{n}.txt").read_text() for n in ("a_red", "b_blue", "c_red")] == texts


def test_florence_rejects_a_non_caption_task(tiny_florence_dir):
    with pytest.raises(SdLoraError, match="task tokens"):
        load_captioner(CaptionerSettings(backend="florence2", model=str(tiny_florence_dir), prompt="<OD>"))


def test_wrong_backend_for_a_folder_is_one_error(tiny_tagger_dir, tiny_blip_dir):
    with pytest.raises(SdLoraError, match="lacks model.onnx"):
        load_captioner(CaptionerSettings(backend="wd14", model=str(tiny_blip_dir)))


def test_training_reads_the_captions_and_keeps_the_head_first(tmp_path, tiny_tagger_dir):
    """What training sees: the scan reads the written metadata.jsonl, and with data.keep_tokens set to the
    reported count, shuffling never moves the trigger and prefix."""
    import random

    from sd_lora.config.data import DataConfig
    from sd_lora.data.captions import CaptionSettings, process_caption
    from sd_lora.data.scan import scan_dataset

    folder = _images(tmp_path / "ds", ["a_red", "b_blue"])
    report = caption_folder(CaptionJob(folder, output="jsonl", trigger="ohwx", prefix="solo"),
                            _tagger(tiny_tagger_dir, threshold=0.3, character_threshold=0.5))
    assert report.keep_tokens == 2
    records = scan_dataset(DataConfig(dir=str(folder), resolution=64)).subsets[0].records
    captions = {r.path.name: (r.caption, r.caption_source) for r in records}
    assert captions["a_red.png"][1] == "metadata"
    assert captions["a_red.png"][0].startswith("ohwx, solo, hatsune miku, kagamine rin, red theme")
    settings = CaptionSettings(keep_tokens=report.keep_tokens, shuffle_caption=True)
    shuffled = {process_caption(captions["a_red.png"][0], settings, random.Random(seed)) for seed in range(20)}
    assert len(shuffled) > 1 and all(c.startswith("ohwx, solo, ") for c in shuffled)
