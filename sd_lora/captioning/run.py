"""Caption a dataset folder: which images need a caption, batching, resume after an interruption, the trigger and
prefix placed where kohya's keep_tokens keeps them, atomic writes, and a record of the model and settings.

    files:  every image directly in the folder (sd-lora's own image list), captioned in name order
    modes:  skip (default: images that have a caption keep it), overwrite, append (new text after the old)
    output: same-stem .txt sidecars, or the folder's metadata.jsonl ("text" field; other fields kept)
    record: sd-lora-captions.json in the folder, one entry per run (the settings can be replayed)
"""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from sd_lora.captioning.captioner import Captioner
from sd_lora.captioning.tag_ops import split_caption
from sd_lora.captioning.textfile import CaptionFile, read_caption_file, write_caption_file
from sd_lora.data.images import BadImage, load_rgb
from sd_lora.data.layout import list_images
from sd_lora.errors import SdLoraError
from sd_lora.fileio import atomic_write_text

__all__ = ["CaptionJob", "CaptionRunReport", "caption_folder", "compose_caption", "RECORD_FILE", "PROGRESS_FILE",
           "last_recorded_run"]

RECORD_FILE = "sd-lora-captions.json"
PROGRESS_FILE = ".sd-lora-caption-progress.json"
MODES = ("skip", "overwrite", "append")
# Captioners see at most this many pixels on a side (they resize to 224-1024 anyway); big photos decode faster.
_DECODE_SIDE = 1536


@dataclass(frozen=True)
class CaptionJob:
    folder: Path
    mode: str = "skip"
    output: str = "txt"  # "txt" sidecars or "jsonl" (metadata.jsonl)
    caption_extension: str = ".txt"
    trigger: str | None = None  # first tag of every caption
    prefix: str | None = None  # tags after the trigger, before the generated text
    keep_tokens_separator: str = ""  # e.g. "|||": written between the kept head and the rest

    def __post_init__(self):
        problems = []
        if self.mode not in MODES:
            problems.append(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.output not in ("txt", "jsonl"):
            problems.append(f"output {self.output!r} is not txt or jsonl")
        if not self.caption_extension.startswith("."):
            problems.append(f"caption extension {self.caption_extension!r} must start with a dot")
        if self.trigger is not None and ("," in self.trigger or not self.trigger.strip()):
            problems.append(f"trigger {self.trigger!r}: give one non-empty tag without commas")
        if problems:
            raise SdLoraError("; ".join(problems))

    @property
    def head(self) -> list[str]:
        """The tags every caption starts with; set data.keep_tokens to their number to keep them in front."""
        return ([self.trigger.strip()] if self.trigger else []) + split_caption(self.prefix or "")

    def as_record(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "folder"}


@dataclass
class CaptionRunReport:
    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)  # already captioned (skip mode) or done by the interrupted run
    failed: list[tuple[Path, str]] = field(default_factory=list)
    keep_tokens: int = 0
    record: Path | None = None
    resumed: int = 0


def compose_caption(generated: str, existing: str | None, job: CaptionJob) -> str:
    """The caption written for an image: trigger and prefix first (once), then the old text when appending,
    then the new text (tags the old text already has are not repeated)."""
    body, head, sep = generated.strip(), job.head, job.keep_tokens_separator
    old = (existing or "").strip() if job.mode == "append" else ""
    if sep and sep in old:
        old_head, _, old = old.partition(sep)
        head, old = list(dict.fromkeys(split_caption(old_head) + head)), old.strip()
    if old:
        old_tags = split_caption(old)
        body = ", ".join([old] + [t for t in split_caption(body) if t not in old_tags])
    if sep:
        return f"{', '.join(head)} {sep} {body}".strip() if head else body
    tags = split_caption(body)
    if any(t in tags for t in head):
        # A head tag already in the text moves to the front instead of appearing twice.
        body = ", ".join(t for t in tags if t not in head)
    return ", ".join(head + ([body] if body else []))


def _settings_key(captioner: Captioner, job: CaptionJob) -> str:
    blob = json.dumps([captioner.settings.as_record(), captioner.files.revision, job.as_record()], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    from sd_lora.data.scan import read_metadata

    read_metadata(path)  # one clear error for a broken line before anything is rewritten
    rows = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


class _Store:
    """The captions of the folder as they are now, and writes that land on disk at once (atomically)."""

    def __init__(self, job: CaptionJob):
        self.job = job
        self.jsonl = job.folder / "metadata.jsonl"
        self.rows = _read_jsonl(self.jsonl) if job.output == "jsonl" else []
        self.index = {r["file_name"]: i for i, r in enumerate(self.rows)}

    def existing(self, image: Path) -> tuple[str | None, CaptionFile | None]:
        if self.job.output == "jsonl":
            i = self.index.get(image.name)
            return (None, None) if i is None else (self.rows[i].get("text", self.rows[i].get("caption")), None)
        path = image.with_suffix(self.job.caption_extension)
        if not path.is_file():
            return None, None
        original = read_caption_file(path)
        return original.text, original

    def put(self, image: Path, text: str, original: CaptionFile | None) -> None:
        if self.job.output == "txt":
            write_caption_file(image.with_suffix(self.job.caption_extension), text, like=original)
            return
        if image.name in self.index:
            row = self.rows[self.index[image.name]]
            row.pop("caption", None)
            row["text"] = text
        else:
            self.index[image.name] = len(self.rows)
            self.rows.append({"file_name": image.name, "text": text})

    def flush(self) -> None:
        if self.job.output == "jsonl":
            atomic_write_text(self.jsonl, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.rows))


def caption_folder(job: CaptionJob, captioner: Captioner,
                   progress: Callable[[int, int], None] | None = None) -> CaptionRunReport:
    """Caption the images of `job.folder`; `progress(done, total)` is called after each batch.

    Every batch is on disk before the next starts, so an interrupted run loses at most one batch; run again with
    the same settings and it goes on where it stopped (overwrite and append runs too: a progress file lists what
    the interrupted run finished, and it is removed when the run completes).
    """
    folder = Path(job.folder)
    if not folder.is_dir():
        raise SdLoraError(f"{folder}: not a folder; give the folder holding the images to caption")
    images = list_images(folder)
    if not images:
        raise SdLoraError(f"{folder}: no images (.png/.jpg/.jpeg/.webp/.bmp) directly in this folder")
    store = _Store(job)
    report = CaptionRunReport(keep_tokens=len(job.head))
    key = _settings_key(captioner, job)
    progress_path = folder / PROGRESS_FILE
    done_before = _previous_progress(progress_path, key)
    todo = []
    for image in images:
        text, _ = store.existing(image)
        if image.name in done_before or (job.mode == "skip" and text is not None and text.strip()):
            report.kept.append(image)
            report.resumed += image.name in done_before
        else:
            todo.append(image)
    started = _now()
    finished: list[str] = sorted(done_before)
    batch_size = captioner.settings.batch_size
    for start in range(0, len(todo), batch_size):
        batch, pictures = [], []
        for image in todo[start:start + batch_size]:
            try:
                pictures.append(load_rgb(image, min_size=(_DECODE_SIDE, _DECODE_SIDE)))
                batch.append(image)
            except (BadImage, OSError) as e:
                report.failed.append((image, str(e)))
        if batch:
            pictures = [_shrink(p) for p in pictures]
            for image, generated in zip(batch, captioner.caption(pictures)):
                text, original = store.existing(image)
                store.put(image, compose_caption(generated, text, job), original)
                report.written.append(image)
                finished.append(image.name)
            store.flush()
            atomic_write_text(progress_path, json.dumps({"settings": key, "done": finished}))
        if progress:
            progress(min(start + batch_size, len(todo)), len(todo))
    progress_path.unlink(missing_ok=True)
    report.record = _record_run(folder, captioner, job, report, started)
    return report


def _shrink(im):
    if max(im.size) > _DECODE_SIDE:
        im = im.copy()
        im.thumbnail((_DECODE_SIDE, _DECODE_SIDE))
    return im


def _previous_progress(path: Path, key: str) -> set[str]:
    """Files an interrupted run with the same settings finished; a run with other settings starts over."""
    if not path.is_file():
        return set()
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        return set(state["done"]) if state.get("settings") == key else set()
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _record_run(folder: Path, captioner: Captioner, job: CaptionJob, report: CaptionRunReport, started: str) -> Path:
    import sd_lora

    path = folder / RECORD_FILE
    runs = _read_record(path)
    runs.append({
        "sd_lora_version": sd_lora.__version__,
        "started": started, "finished": _now(),
        "captioner": captioner.settings.as_record(),
        "model": captioner.files.as_record(),
        "device": captioner.device, "dtype": captioner.dtype,
        "job": job.as_record(),
        "keep_tokens": report.keep_tokens,
        "written": [p.name for p in report.written],
        "failed": [[p.name, why] for p, why in report.failed],
    })
    return atomic_write_text(path, json.dumps({"runs": runs}, indent=1, ensure_ascii=False) + "\n")


def _read_record(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    try:
        runs = json.loads(path.read_text(encoding="utf-8"))["runs"]
        if isinstance(runs, list):
            return runs
    except (OSError, ValueError, KeyError, TypeError):
        pass
    raise SdLoraError(f"{path}: not a caption record sd-lora can extend; move it away (it is sd-lora's own log of "
                      "caption runs) and run again")


def last_recorded_run(folder: str | Path) -> dict:
    """The newest run in the folder's record (its "captioner" and "job" entries replay it)."""
    path = Path(folder) / RECORD_FILE
    runs = _read_record(path)
    if not runs:
        raise SdLoraError(f"{path}: no recorded caption run to reuse; caption the folder once first")
    return runs[-1]
