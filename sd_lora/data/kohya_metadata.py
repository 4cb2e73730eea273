"""kohya's fine-tuning metadata file (`--in_json`, a subset's `metadata_file`): one JSON object keyed by image,
each entry with a `caption` and/or `tags` -> {image path: caption}.

The key is the image path, absolute or relative to the subset folder, with or without its extension (kohya's
`merge_captions_to_metadata.py` writes the stem). As in kohya, the caption is `caption` + ',' + `tags`.
"""

from __future__ import annotations

import json
from pathlib import Path

from sd_lora.data.images import IMAGE_EXTENSIONS
from sd_lora.errors import SdLoraError

__all__ = ["read_kohya_metadata"]


def _image_path(key: str, image_dir: Path) -> Path | None:
    path = Path(key) if Path(key).is_absolute() else image_dir / key
    if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
        return path.resolve()
    for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        candidate = path.with_name(path.name + ext)
        if candidate.is_file():
            return candidate.resolve()
    return None


def read_kohya_metadata(path: Path, image_dir: Path) -> dict[Path, str]:
    try:
        tree = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as e:
        raise SdLoraError(f"{path}: cannot read the metadata file ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SdLoraError(f"{path}: not a valid UTF-8 JSON file ({e}); kohya's metadata is one JSON object keyed "
                          "by image") from None
    if not isinstance(tree, dict):
        raise SdLoraError(f"{path}: kohya's metadata is one JSON object keyed by image, got {type(tree).__name__}")
    entries, missing = {}, []
    for key, entry in tree.items():
        if not isinstance(entry, dict):
            raise SdLoraError(f"{path}: the entry of {key!r} must be an object with 'caption' and/or 'tags'")
        caption, tags = entry.get("caption") or "", entry.get("tags") or ""
        if not isinstance(caption, str) or not isinstance(tags, str):
            raise SdLoraError(f"{path}: 'caption' and 'tags' of {key!r} must be strings")
        image = _image_path(key, image_dir)
        if image is None:
            missing.append(key)
            continue
        entries[image] = ",".join(part for part in (caption.strip(), tags.strip()) if part)
    if missing:
        raise SdLoraError(f"{path}: {len(missing)} image(s) named in the metadata are not in {image_dir}, e.g. "
                          f"{missing[0]!r}; set the subset's image_dir to their folder or fix the keys")
    return entries
