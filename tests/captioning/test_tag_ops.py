"""Caption operations against hand-written folders: the expected files are written out by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from sd_lora.captioning import tag_ops
from sd_lora.cli.main import main
from sd_lora.errors import SdLoraError


def _dataset(folder: Path, captions: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, raw in captions.items():
        Image.new("RGB", (8, 8)).save(folder / f"{stem}.png")
        (folder / f"{stem}.txt").write_bytes(raw)
    return folder


def test_tag_frequencies_count_files_not_repeats():
    table = tag_ops.tag_frequencies(["a, b, a", "b, c", "b"])
    assert table == [("b", 3), ("a", 1), ("c", 1)]


def test_operations_on_strings():
    assert tag_ops.remove_tags(["blurry", "lowres"])("1girl, blurry, smile, lowres") == "1girl, smile"
    assert tag_ops.rename_tag("smile", "smiling")("1girl, smile, open mouth") == "1girl, smiling, open mouth"
    assert tag_ops.rename_tag("grin", "smile")("smile, grin") == "smile"
    assert tag_ops.dedupe_tags()("a, b, a, c, b") == "a, b, c"
    assert tag_ops.sort_tags(keep=1)("ohwx, zebra, Apple, mango") == "ohwx, Apple, mango, zebra"
    assert tag_ops.prepend_trigger("ohwx")("a dog, ohwx, grass") == "ohwx, a dog, grass"
    assert tag_ops.replace_text("dog", "cat")("a dog and a dogfish") == "a cat and a catfish"
    assert tag_ops.replace_text(r"(\w+) hair", r"hair \1", regex=True)("long hair, red hair") == "hair long, hair red"
    # A caption the operation does not touch keeps its exact text (spacing included).
    assert tag_ops.remove_tags(["x"])("a photo,of  a dog") == "a photo,of  a dog"


def test_replace_literal_keeps_backslashes():
    assert tag_ops.replace_text("/", "\\")("a/b") == "a\\b"


def test_bad_regex_and_trigger_are_clear_errors():
    with pytest.raises(SdLoraError, match="not a valid regular expression"):
        tag_ops.replace_text("(", "x", regex=True)
    with pytest.raises(SdLoraError, match="invalid group reference"):
        tag_ops.replace_text("(a)", r"\2", regex=True)("a cat")
    with pytest.raises(SdLoraError, match="without commas"):
        tag_ops.prepend_trigger("a, b")


def test_apply_keeps_encoding_line_endings_and_undo_restores_bytes(tmp_path):
    originals = {
        "crlf": b"1girl, smile\r\nsecond line\r\n",
        "bom": b"\xef\xbb\xbfsmile, caf\xc3\xa9",
        "cp1252": b"smile, caf\xe9\n",  # Windows-1252 e-acute
        "untouched": b"1girl, solo",
    }
    folder = _dataset(tmp_path / "ds", originals)
    changes = tag_ops.plan_edit(tag_ops.caption_files(folder), tag_ops.rename_tag("smile", "grin"))
    assert sorted(c.path.name for c in changes) == ["bom.txt", "cp1252.txt", "crlf.txt"]
    backup = tag_ops.apply_changes(changes, folder, "rename-tag")
    assert (folder / "crlf.txt").read_bytes() == b"1girl, grin, second line\r\n"
    assert (folder / "bom.txt").read_bytes() == b"\xef\xbb\xbfgrin, caf\xc3\xa9"
    assert (folder / "cp1252.txt").read_bytes() == b"grin, caf\xe9\n"
    assert (folder / "untouched.txt").read_bytes() == originals["untouched"]
    assert sorted(p.name for p in backup.iterdir()) == ["bom.txt", "cp1252.txt", "crlf.txt", "manifest.json"]
    _, restored = tag_ops.undo_last(folder)
    assert len(restored) == 3
    for stem, raw in originals.items():
        assert (folder / f"{stem}.txt").read_bytes() == raw
    with pytest.raises(SdLoraError, match="no caption backups"):
        tag_ops.undo_last(folder)


def test_character_outside_the_old_encoding_switches_to_utf8(tmp_path):
    folder = _dataset(tmp_path / "ds", {"a": b"caf\xe9"})
    tag_ops.apply_changes(tag_ops.plan_edit(tag_ops.caption_files(folder), tag_ops.prepend_trigger("\u732b")),
                          folder, "add-trigger")
    assert (folder / "a.txt").read_bytes() == "\u732b, caf\u00e9".encode("utf-8")


def test_two_undos_walk_back_in_order(tmp_path):
    folder = _dataset(tmp_path / "ds", {"a": b"x, y"})
    for op in (tag_ops.rename_tag("x", "z"), tag_ops.rename_tag("y", "w")):
        tag_ops.apply_changes(tag_ops.plan_edit(tag_ops.caption_files(folder), op), folder, "rename-tag")
    assert (folder / "a.txt").read_text() == "z, w"
    tag_ops.undo_last(folder)
    assert (folder / "a.txt").read_text() == "z, y"
    tag_ops.undo_last(folder)
    assert (folder / "a.txt").read_text() == "x, y"


def test_cli_dry_run_prints_diff_and_writes_nothing(tmp_path, capsys):
    folder = _dataset(tmp_path / "ds", {"a": b"dog, blurry", "b": b"cat"})
    assert main(["captions", "remove-tags", str(folder), "blurry", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "-dog, blurry\n+dog" in out
    assert "1 of 2 caption file(s) would change" in out
    assert (folder / "a.txt").read_bytes() == b"dog, blurry"
    assert not (folder / tag_ops.BACKUP_DIR).exists()


def test_cli_edit_then_undo_and_tags_table(tmp_path, capsys):
    folder = _dataset(tmp_path / "ds", {"a": b"dog, blurry", "b": b"cat, blurry"})
    assert main(["captions", "tags", str(folder), "--json"]) == 0
    assert capsys.readouterr().out.strip() == '[["blurry", 2], ["cat", 1], ["dog", 1]]'
    assert main(["captions", "add-trigger", str(folder), "ohwx"]) == 0
    assert (folder / "b.txt").read_text() == "ohwx, cat, blurry"
    assert main(["captions", "undo", str(folder)]) == 0
    assert (folder / "b.txt").read_text() == "cat, blurry"


def test_cli_missing_folder_is_one_error(tmp_path, capsys):
    assert main(["captions", "dedupe", str(tmp_path / "nope")]) == 2
    assert "not a folder" in capsys.readouterr().err
