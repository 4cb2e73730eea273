"""The datasets page: the --dry-run plan, thumbnails and captions, in-place caption edits, tag tools."""

from __future__ import annotations

import html
import re

from PIL import Image

from sd_lora.cli.main import main


def test_the_page_shows_the_dry_run_plan(make_client, data_root, capsys):
    c = make_client([data_root])
    r = c.get("/datasets", params={"path": "data/shapes", "resolution": 32, "batch_size": 2, "repeats": 3})
    assert r.status_code == 200
    assert main(["train", "--set", f"data.dir={data_root / 'shapes'}", "--set", "data.resolution=32", "--set",
                 "train.batch_size=2", "--set", "data.num_repeats=3", "--set", "train.max_steps=1000", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    # the dataset plan: what --dry-run prints before its precision and memory lines
    plan = printed[printed.index("Dataset plan"):printed.index("\nprecision:")].rstrip("\n")
    shown = html.unescape(re.search(r'<pre id="plan" class="plan">(.*?)</pre>', r.text, flags=re.S).group(1))
    assert shown == plan
    assert "6 images x 3 repeats = 18 samples" in plan and "    32x32: " in plan


def test_root_list_subfolders_thumbnails_and_captions(make_client, data_root):
    c = make_client([data_root])
    assert 'href="/datasets?path=data"' in c.get("/datasets").text
    top = c.get("/datasets", params={"path": "data"}).text
    assert 'href="/datasets?path=data/shapes"' in top and "No images in this folder" in top
    page = c.get("/datasets", params={"path": "data/shapes"}).text
    assert page.count('class="image"') == 6 and "shape, red, night sky</textarea>" in page
    r = c.get("/api/thumb", params={"path": "data/shapes/001.png", "size": 16})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    import io

    with Image.open(io.BytesIO(r.content)) as im:
        assert im.size == (16, 16)
    assert c.get("/api/thumb", params={"path": "data/shapes/001.txt"}).status_code == 400


def test_caption_edit_keeps_encoding_bom_and_line_endings(make_client, data_root):
    c = make_client([data_root])
    shapes = data_root / "shapes"
    (shapes / "000.txt").write_bytes("caf\xe9, old\r\n".encode("cp1252"))
    (shapes / "001.txt").write_bytes(b"\xef\xbb\xbfna\xc3\xafve, tag")
    r = c.post("/api/captions", json={"path": "data/shapes/000.png", "text": "café, new"})
    assert r.status_code == 200 and r.json()["encoding"] == "cp1252"
    assert (shapes / "000.txt").read_bytes() == "café, new\r\n".encode("cp1252")
    r = c.post("/api/captions", json={"path": "data/shapes/001.txt", "text": "naïve, other"})
    assert (shapes / "001.txt").read_bytes() == b"\xef\xbb\xbf" + "naïve, other".encode("utf-8")
    r = c.post("/api/captions", json={"path": "data/shapes/000.png", "text": "snow ☃"})
    assert r.status_code == 400 and "cp1252" in r.json()["error"]
    assert (shapes / "000.txt").read_bytes() == "café, new\r\n".encode("cp1252")  # untouched by the refused edit
    assert c.get("/api/captions", params={"path": "data/shapes/001.png"}).json()["text"] == "naïve, other"


def test_a_caption_file_is_created_for_an_image_without_one(make_client, data_root):
    c = make_client([data_root])
    (data_root / "shapes" / "002.txt").unlink()
    assert "(no caption file)" in c.get("/datasets", params={"path": "data/shapes"}).text
    r = c.post("/api/captions", json={"path": "data/shapes/002.png", "text": "fresh"})
    assert r.status_code == 200 and (data_root / "shapes" / "002.txt").read_text(encoding="utf-8") == "fresh"
    r = c.post("/api/captions", json={"path": "data/shapes/nothere/002.png", "text": "x"})
    assert r.status_code == 404


def test_find_replace_and_tag_frequencies(make_client, data_root):
    c = make_client([data_root])
    shapes = data_root / "shapes"
    (shapes / "005.txt").write_text("red, night sky, redder\n", encoding="utf-8")
    page = c.get("/datasets", params={"path": "data/shapes"}).text
    assert "<tr><td>night sky</td><td>6</td></tr>" in page and "<tr><td>red</td><td>3</td></tr>" in page
    r = c.post("/datasets/replace", data={"path": "data/shapes", "find": "red", "replace": "crimson"})
    assert r.status_code == 200 and "replaced &#39;red&#39; in 3 caption file(s)" in r.text
    assert (shapes / "005.txt").read_text(encoding="utf-8") == "crimson, night sky, redder\n"  # whole tags only
    assert (shapes / "001.txt").read_text(encoding="utf-8") == "shape, crimson, night sky\n"
    c.post("/datasets/replace", data={"path": "data/shapes", "find": "shape", "replace": ""})
    assert (shapes / "001.txt").read_text(encoding="utf-8") == "crimson, night sky\n"
    page = c.get("/datasets", params={"path": "data/shapes"}).text
    assert "<tr><td>crimson</td><td>3</td></tr>" in page and "<td>shape</td>" not in page
