"""Dataset inputs: bad files are named and skipped (the run goes on with the good ones), broken text is a
warning or an error naming file and line, and every warning is printed once."""

from __future__ import annotations

import struct
import sys
import zlib

from tests.reliability.conftest import (NO_DAC, assert_ok, assert_unchanged, assert_user_error, dry_run, run_cli,
                                        snapshot, write_image)


def _warnings(result) -> str:
    return result.stdout + result.stderr


def test_huge_png_is_rejected_from_its_header_without_decoding(tmp_path):
    # a valid 12000x12000 PNG (~400 KB of zlib zeros): decoding it would cost ~430 MB
    path = tmp_path / "huge.png"
    comp, raw_row = zlib.compressobj(1), b"\0" * (1 + 12000 * 3)
    idat = b"".join(comp.compress(raw_row) for _ in range(12000)) + comp.flush()

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 12000, 12000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    code = (
        "import resource, sys\nfrom pathlib import Path\nfrom sd_lora.data.images import BadImage, probe_image\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    probe_image(Path(sys.argv[1]))\nexcept BadImage as e:\n    print('refused:', e)\n"
        "print('grew_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n")
    import subprocess

    from tests.reliability.conftest import cli_env

    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                            env=cli_env(tmp_path), timeout=120)
    assert "refused: too large to decode safely (12000x12000 = 144 MP" in result.stdout, result.stderr
    grew_kb = int(result.stdout.split("grew_kb")[1])
    assert grew_kb < 50_000, f"probing grew the process by {grew_kb} KB: the image was decoded"


def test_png_exif_orientation_is_still_read_from_the_header(tmp_path):
    from PIL import Image

    from sd_lora.data.images import probe_image

    im = Image.new("RGB", (40, 20))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90: displayed 20x40
    im.save(tmp_path / "r.png", exif=exif)
    info = probe_image(tmp_path / "r.png")
    assert (info.width, info.height) == (20, 40)


def test_dangling_symlink_is_named_and_skipped(tmp_path, dataset):
    (dataset / "gone.png").symlink_to(tmp_path / "deleted.png")
    result = dry_run(dataset, tmp_path)
    assert_ok(result)
    assert "gone.png: a broken symbolic link" in result.stdout and "deleted.png" in result.stdout
    assert "3 images" in result.stdout


def test_image_below_a_quarter_of_the_resolution_is_named_and_skipped(tmp_path, dataset):
    write_image(dataset / "dot.png", size=(1, 1))
    write_image(dataset / "thin.png", size=(64, 7))
    result = dry_run(dataset, tmp_path)
    assert_ok(result)
    assert "dot.png: too small (1x1)" in result.stdout and "upscaled 32x" in result.stdout
    assert "thin.png: too small (64x7)" in result.stdout and "3 images" in result.stdout


def test_unreadable_image_is_named_and_skipped(tmp_path, dataset):
    write_image(dataset / "locked.png").chmod(0)
    result = dry_run(dataset, tmp_path, prefix=NO_DAC)
    assert_ok(result)
    assert "locked.png: cannot be read (Permission denied)" in result.stdout and "3 images" in result.stdout


def test_unreadable_caption_file_skips_its_image_with_the_reason(tmp_path, dataset):
    (dataset / "0.txt").chmod(0)
    result = dry_run(dataset, tmp_path, prefix=NO_DAC)
    assert_ok(result)
    assert "0.png: its caption file 0.txt cannot be read (Permission denied)" in result.stdout
    assert "2 images" in result.stdout


def test_unreadable_repeat_folder_is_named_and_skipped(tmp_path):
    data = tmp_path / "data"
    write_image(data / "10_cat" / "a.png")
    write_image(data / "5_dog" / "b.png")
    (data / "5_dog").chmod(0)
    try:
        result = dry_run(data, tmp_path, prefix=NO_DAC)
    finally:
        (data / "5_dog").chmod(0o755)
    assert_ok(result)
    assert "data.dir (5_dog): skipped the folder" in result.stdout and "Permission denied" in result.stdout
    assert "subset 'cat' [data.dir (10_cat)]: 1 images x 10 repeats" in result.stdout


def test_unreadable_data_folder_is_a_clear_error(tmp_path, dataset):
    dataset.chmod(0)
    try:
        result = dry_run(dataset, tmp_path, prefix=NO_DAC)
    finally:
        dataset.chmod(0o755)
    assert_user_error(result, "train", "data.dir", "cannot be read (Permission denied)", "fix its permissions")


def test_non_utf8_caption_is_decoded_with_a_warning_naming_the_file(tmp_path, dataset):
    (dataset / "1.txt").write_bytes("café crème".encode("cp1252"))
    from sd_lora.config.data import DataConfig
    from sd_lora.data import scan_dataset

    scan = scan_dataset(DataConfig(dir=str(dataset), resolution=32))
    caption = {r.path.name: r.caption for r in scan.subsets[0].records}["1.png"]
    assert caption == "café crème"
    (warning,) = [w for w in scan.warnings if "not UTF-8" in w]
    assert str(dataset / "1.txt") in warning and "Windows-1252" in warning and "'café crème'" in warning


def test_non_utf8_metadata_is_an_error_with_the_line_number(tmp_path, dataset):
    (dataset / "metadata.jsonl").write_bytes(b'{"file_name": "0.png", "text": "ok"}\n'
                                             b'{"file_name": "1.png", "text": "caf\xe9"}\n')
    result = dry_run(dataset, tmp_path)
    assert_user_error(result, "train", "metadata.jsonl:2: not UTF-8 text (byte 0xe9", "re-save the file as UTF-8")


def test_broken_metadata_line_is_an_error_with_the_line_number(tmp_path, dataset):
    (dataset / "metadata.jsonl").write_text('{"file_name": "0.png", "text": "ok"}\n{"file_name": \n')
    assert_user_error(dry_run(dataset, tmp_path), "train", "metadata.jsonl:2: not valid JSON")


def test_truncated_and_fake_images_are_skipped_with_reasons(tmp_path, dataset):
    full = write_image(tmp_path / "full.png", size=(64, 64), caption=None).read_bytes()
    (dataset / "cut.png").write_bytes(full[: len(full) // 2])
    (dataset / "fake.png").write_text("not an image")
    (dataset / "empty.png").write_bytes(b"")
    result = dry_run(dataset, tmp_path)
    assert_ok(result)
    out = result.stdout
    assert "skipped 3 unusable image file(s)" in out and "3 images" in out
    assert "cut.png: " in out and "fake.png: not an image" in out and "empty.png: empty file" in out


def test_only_bad_files_is_an_error_listing_each_reason(tmp_path):
    data = tmp_path / "data"
    write_image(data / "dot.png", size=(2, 2))
    (data / "fake.png").write_text("x")
    message = assert_user_error(dry_run(data, tmp_path), "train", "no usable training images", "2 file(s) skipped")
    assert "dot.png: too small (2x2)" in message and "fake.png: not an image" in message


def test_missing_data_folder_is_a_clear_error(tmp_path):
    assert_user_error(dry_run(tmp_path / "nope", tmp_path), "train", "data.dir", "does not exist or is not a folder")


def test_warnings_are_printed_once_in_a_dry_run(tmp_path, dataset):
    write_image(dataset / "dot.png", size=(1, 1))
    write_image(dataset / "nocap.png", caption=None)
    result = dry_run(dataset, tmp_path)
    assert_ok(result)
    text = _warnings(result)
    assert text.count("dot.png: too small") == 1, text
    assert text.count("have no caption") == 1, text
    assert result.stderr.strip() == "", result.stderr


def test_warnings_are_printed_once_in_a_train_run_and_earlier_files_survive(tmp_path, dataset):
    (dataset / "2.txt").write_bytes("caf\xe9".encode("latin-1"))
    write_image(dataset / "dot.png", size=(1, 1))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "older.safetensors").write_bytes(b"an older adapter")
    before = snapshot(out)
    result = run_cli("train", "--set", f"data.dir={dataset}", "--set", "data.resolution=32",
                     "--set", "train.max_steps=1", "--set", "network.rank=2", "--set", f"output.dir={out}",
                     "--set", "output.name=run", "--set", "output.save_state_at_end=false",
                     "--set", "output.log_with=none", cwd=tmp_path, timeout=300)
    assert_ok(result)
    text = _warnings(result)
    assert text.count("dot.png: too small") == 1, text
    assert text.count("is not UTF-8") == 1, text
    assert (out / "run.safetensors").is_file()
    kept = {k: v for k, v in snapshot(out).items() if k in before}
    assert kept == before
