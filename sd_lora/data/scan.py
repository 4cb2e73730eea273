"""The cheap first pass over the dataset: find images, read headers and captions, skip bad files.

`scan_dataset` runs before any model loads, so a missing folder, an empty dataset or a broken metadata
file fails in milliseconds. No pixel data is decoded here.

Warnings are collected in `ScanReport.warnings` (the caller prints them, once) and only logged at INFO
level, so a run never shows the same warning twice.
"""

from __future__ import annotations

import codecs

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sd_lora.config.data import DataConfig
from sd_lora.data.images import IMAGE_EXTENSIONS, BadImage, probe_image
from sd_lora.data.layout import SubsetSpec, list_images, resolve_subsets, resolve_validation
from sd_lora.errors import SdLoraError

__all__ = ["ImageRecord", "SubsetScan", "ScanReport", "scan_dataset", "read_metadata"]

log = logging.getLogger("sd_lora.data")
_EXAMPLES = 3  # file names quoted in a summary warning
_LISTED = 20  # skipped files listed one per line with their reason
# Encodings tried for a caption file that is not UTF-8 (Windows-1252 is what Windows editors write; Latin-1
# decodes any byte, so the last one never fails).
_FALLBACK_ENCODINGS = ("cp1252", "latin-1")


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    caption: str  # before trigger word and randomisation
    caption_source: str  # "file", "metadata", "class_tokens" or "none"
    width: int  # displayed size (EXIF orientation applied)
    height: int


@dataclass
class SubsetScan:
    spec: SubsetSpec
    records: list[ImageRecord]

    @property
    def missing_class_images(self) -> int:
        return max(0, self.spec.num_class_images - len(self.records)) if self.spec.is_reg else 0


@dataclass
class ScanReport:
    subsets: list[SubsetScan]
    validation: list[SubsetScan] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def train_images(self) -> int:
        return sum(len(s.records) for s in self.subsets if not s.spec.is_reg)

    @property
    def reg_images(self) -> int:
        return sum(len(s.records) for s in self.subsets if s.spec.is_reg)


def scan_dataset(cfg: DataConfig) -> ScanReport:
    """Find every usable image of every subset; raise SdLoraError when there is nothing to train on."""
    report = ScanReport(subsets=[])
    min_side = max(1, cfg.resolution // 4)
    report.subsets = [_scan_subset(spec, report, min_side) for spec in resolve_subsets(cfg)]
    report.validation = [_scan_subset(spec, report, min_side) for spec in resolve_validation(cfg)]
    if report.skipped:
        _warn(report, _skipped_message(report.skipped))
    _summarise_captions(report)
    if report.train_images == 0:
        folders = ", ".join(sorted({str(s.spec.dir) for s in report.subsets if not s.spec.is_reg}))
        if not folders:
            raise SdLoraError("no training folder: every data subset is a regularisation set (is_reg = true); set "
                              "data.dir, or add a [[data.subsets]] table without is_reg, for the images to learn")
        found = "".join(f"\n  {w}" for w in report.warnings)
        skipped = f" ({len(report.skipped)} file(s) skipped)" if report.skipped else ""
        raise SdLoraError(
            f"no usable training images in {folders}{skipped}; put {'/'.join(IMAGE_EXTENSIONS)} images with "
            f"same-stem caption files there" + (f". What the scan found:{found}" if found else ""))
    if cfg.validation_split > 0 and report.train_images < 2:
        raise SdLoraError(f"data.validation_split = {cfg.validation_split} needs at least 2 training images to hold "
                          f"one out, found {report.train_images}; set it to 0 or add images")
    for sub in report.validation:
        if not sub.records:
            raise SdLoraError(f"data.validation_dir {str(sub.spec.dir)!r} holds no usable images")
    for sub in report.subsets:
        if sub.missing_class_images and not sub.spec.class_prompt:
            raise SdLoraError(f"{sub.spec.where}: {sub.missing_class_images} class images must be generated but no "
                              "prompt is set; set data.class_prompt (e.g. 'a photo of a dog')")
    return report


_UNSUPPORTED = (".gif", ".tif", ".tiff", ".apng", ".avif", ".heic", ".heif", ".jxl")


def _unsupported_images(folder: Path) -> list[Path]:
    """Image files of a format sd-lora does not train on: named as skipped, never dropped without a word."""
    try:
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in _UNSUPPORTED and p.is_file())
    except OSError:
        return []


def _skipped_message(skipped: list[tuple[Path, str]]) -> str:
    lines = [f"  {p}: {why}" for p, why in skipped[:_LISTED]]
    if len(skipped) > _LISTED:
        lines.append(f"  ... and {len(skipped) - _LISTED} more")
    return f"skipped {len(skipped)} unusable image file(s):\n" + "\n".join(lines)


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise SdLoraError(f"{path}: cannot read the {what} ({e.strerror or e}); fix its permissions or "
                          "remove it") from None


def read_metadata(path: Path) -> dict[Path, str]:
    """HF imagefolder metadata.jsonl -> {image path: caption}; a broken line is an error naming its number."""
    entries: dict[Path, str] = {}
    raw = _read_bytes(path, "metadata file")
    for lineno, blob in enumerate(raw.removeprefix(b"\xef\xbb\xbf").splitlines(), start=1):
        try:
            line = blob.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SdLoraError(f"{path}:{lineno}: not UTF-8 text (byte 0x{blob[e.start]:02x} at column {e.start + 1}); "
                              "JSON lines must be UTF-8: re-save the file as UTF-8") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SdLoraError(f"{path}:{lineno}: not valid JSON ({e.msg}); fix or remove this line") from e
        if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
            raise SdLoraError(f"{path}:{lineno}: each line must be a JSON object with a \"file_name\" string")
        text = row.get("text", row.get("caption", ""))
        if not isinstance(text, str):
            raise SdLoraError(f"{path}:{lineno}: \"text\" must be a string, got {text!r}")
        entries[(path.parent / row["file_name"]).resolve()] = text.strip()
    return entries


def _scan_subset(spec: SubsetSpec, report: ScanReport, min_side: int = 1) -> SubsetScan:
    if not spec.dir.is_dir():  # a regularisation folder that class-image generation will create
        return SubsetScan(spec, [])
    try:
        paths = [] if _is_kohya_json(spec) else list_images(spec.dir)
    except OSError as e:
        _warn(report, f"{spec.where}: skipped the folder {spec.dir}: it cannot be read ({e.strerror or e}); fix its "
                      "permissions (e.g. chmod -R u+rX) to train on its images")
        return SubsetScan(spec, [])
    for path in _unsupported_images(spec.dir):
        report.skipped.append((path, f"{path.suffix.lower()[1:].upper()} images are not read (an animated one has "
                                     "several frames, which would train as one); convert it to PNG to train on it"))
    metadata = _metadata_for(spec)
    known = {_resolved(p) for p in paths}
    missing = [p for p in metadata if p not in known and not p.is_file()]
    if missing:
        _warn(report, f"{spec.where}: {len(missing)} file(s) named in the metadata file do not exist, e.g. "
                      f"{missing[0].name}")
    paths += sorted(p for p in metadata if p not in known and p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    records = []
    for path in paths:
        try:
            info = probe_image(path)
            if min(info.width, info.height) < min_side:
                raise BadImage(f"too small ({info.width}x{info.height}): a side is below a quarter of data.resolution "
                               f"({min_side} px), so it would be upscaled "
                               f"{max(min_side * 4 / info.width, min_side * 4 / info.height):.0f}x; use a larger "
                               "image or remove it")
            caption, source = _caption_for(path, spec, metadata, report)
        except BadImage as e:
            log.info("skipping %s: %s", path, e)
            report.skipped.append((path, str(e)))
            continue
        records.append(ImageRecord(path, caption, source, info.width, info.height))
    return SubsetScan(spec, records)


def _resolved(path: Path) -> Path:
    """The file a path leads to; a link loop is kept as it is (probe_image names it as skipped)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: Python < 3.13 reports a link loop so
        return path


def _metadata_for(spec: SubsetSpec) -> dict[Path, str]:
    path = spec.metadata_file or spec.dir / "metadata.jsonl"
    if spec.metadata_file is not None and not path.is_file():
        raise SdLoraError(f"{spec.where}: metadata_file {str(path)!r} does not exist")
    if _is_kohya_json(spec):
        from sd_lora.data.kohya_metadata import read_kohya_metadata

        return read_kohya_metadata(path, spec.dir)
    return read_metadata(path) if path.is_file() else {}


def _is_kohya_json(spec: SubsetSpec) -> bool:
    """kohya's fine-tuning metadata (a .json object keyed by image): it alone lists the images and captions."""
    return spec.metadata_file is not None and spec.metadata_file.suffix.lower() == ".json"


def _caption_for(path: Path, spec: SubsetSpec, metadata: dict[Path, str],
                 report: ScanReport | None = None) -> tuple[str, str]:
    """Caption file, then metadata.jsonl, then the subset's class tokens, then empty."""
    caption_file = path.with_suffix(spec.caption_extension)
    if _is_kohya_json(spec) and path.resolve() in metadata:
        return metadata[path.resolve()], "metadata"
    if caption_file.is_file():
        text = _read_caption(caption_file, report)
        return " ".join(line.strip() for line in text.splitlines() if line.strip()), "file"
    text = metadata.get(path.resolve())
    if text is not None:
        return text, "metadata"
    if spec.class_tokens:
        return spec.class_tokens, "class_tokens"
    return "", "none"


def _read_caption(path: Path, report: ScanReport | None) -> str:
    """UTF-8 (with or without BOM); other text is decoded as Windows-1252 with a warning naming the file."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise BadImage(f"its caption file {path.name} cannot be read ({e.strerror or e}); fix its permissions") from None
    if raw.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):  # before UTF-16: UTF-32 LE's BOM starts alike
        return _decode_bom(raw, "utf-32", path)
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # Windows Notepad's "Unicode"
        return _decode_bom(raw, "utf-16", path)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        first_bad = e.start
    for encoding in _FALLBACK_ENCODINGS:
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    shown = " ".join(text.split())
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    message = (f"caption {path} is not UTF-8 (byte 0x{raw[first_bad]:02x} at offset {first_bad}); read it as "
               f"{'Windows-1252' if encoding == 'cp1252' else 'Latin-1'}: {shown!r}; re-save it as UTF-8 if that "
               "is not the intended text")
    if report is not None:
        _warn(report, message)
    return text


def _decode_bom(raw: bytes, encoding: str, path: Path) -> str:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        raise BadImage(f"its caption file {path.name} starts with a {encoding.upper()} byte-order mark but is not "
                       f"{encoding.upper()} text (byte offset {e.start}); re-save it as UTF-8") from None


def _summarise_captions(report: ScanReport) -> None:
    all_records = [(s.spec, r) for s in report.subsets + report.validation for r in s.records]
    sources = Counter(r.caption_source for _, r in all_records)
    if sources["class_tokens"]:
        _warn(report, f"{sources['class_tokens']} image(s) have no caption file or metadata entry and use their "
                      "subset's class tokens as caption")
    if sources["none"]:
        examples = [r.path.name for _, r in all_records if r.caption_source == "none"][:_EXAMPLES]
        _warn(report, f"{sources['none']} image(s) have no caption (no caption file, metadata entry or class "
                      f"tokens) and train with an empty caption, e.g. {', '.join(examples)}")


def _warn(report: ScanReport, message: str) -> None:
    log.info(message)
    report.warnings.append(message)
