"""sd-lora's one safetensors layer: reading tensor files with every failure turned into one clear SdLoraError,
the one layout every file is written in (`header_prefix`), and atomic writing (`write_tensors`).

safetensors files are checked by hand before the library parses them (so a truncated file or a bad
header says what is wrong); pickled checkpoints are refused unless the caller opts in, and even then
are loaded with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from sd_lora.errors import SdLoraError
from sd_lora.fileio import atomic_write_bytes, printable

__all__ = ["read_tensor_file", "diffusers_lora_file", "DIFFUSERS_LORA_FILES", "serialize", "write_safetensors",
           "data_region", "metadata_json", "PICKLE_SUFFIXES", "write_tensors", "header_prefix", "tensor_bytes",
           "read_header", "DTYPE_NAMES"]

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
DIFFUSERS_LORA_FILES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin")
_ZIP_MAGIC = b"PK\x03\x04"
_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
          "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}


_MAX_JSON_CHARS = 64 << 20  # far above any real record (a 20,000-image ss_tag_frequency is about 2 MB)


def metadata_json(text: str, where: str, kind: type = dict):
    """A JSON value stored as text in a file's metadata, of container type `kind` (dict or list): any other
    type, broken JSON, too deep a nesting or too large a text is one SdLoraError naming `where`."""
    what = "an object" if kind is dict else "a list"
    if len(text) > _MAX_JSON_CHARS:
        raise SdLoraError(f"{where}: {len(text) / 2**20:.0f} MB of JSON is more than a metadata record ever holds; "
                          "the file is damaged or not an adapter file")
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError) as e:
        why = "nested too deeply" if isinstance(e, RecursionError) else f"not valid JSON ({str(e)[:120]})"
        raise SdLoraError(f"{where}: {why}; the file is damaged or was not written by sd-lora") from None
    if not isinstance(value, kind):
        raise SdLoraError(f"{where}: expected {what} of JSON, found {type(value).__name__}; the file is damaged or "
                          "was not written by sd-lora")
    return value


def _check_header(path: Path, blob_head: bytes, size: int) -> dict:
    if size < 8:
        raise SdLoraError(f"{path}: file is truncated ({size} bytes; a safetensors file starts with an "
                          "8-byte header length). Re-download or re-export it.")
    (n,) = struct.unpack("<Q", blob_head[:8])
    if n > size - 8:
        # the number is the file's first 8 bytes: never shown (it would echo a text file's contents)
        raise SdLoraError(f"{path}: the header length in its first 8 bytes is larger than the file ({size} bytes): "
                          "the file is truncated or not a safetensors file.")
    try:
        header = json.loads(blob_head[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        where = f"byte {e.start}" if isinstance(e, UnicodeDecodeError) else f"character {e.pos}"
        raise SdLoraError(f"{path}: the safetensors header is not valid JSON (at {where}); the file is damaged "
                          "or not a safetensors file.") from None
    if not isinstance(header, dict):
        raise SdLoraError(f"{path}: the safetensors header is not a JSON object.")
    data_size = size - 8 - n
    for key, info in header.items():
        if key == "__metadata__":
            if not (isinstance(info, dict) and all(isinstance(v, str) for v in info.values())):
                raise SdLoraError(f"{path}: the header's __metadata__ is {type(info).__name__}, not a table of text "
                                  "values; the file is damaged or not a safetensors file.")
            continue
        try:
            start, end = info["data_offsets"]
            shape = info["shape"]
            if not all(type(d) is int and d >= 0 for d in shape) or not all(type(o) is int and o >= 0
                                                                             for o in (start, end)):
                raise ValueError
            numel = 1
            for d in shape:
                numel *= d
            expected = numel * _SIZES[info["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise SdLoraError(f"{path}: header entry for tensor {key!r} is malformed (shape and offsets must be "
                              "whole numbers from 0 up, dtype one safetensors knows); the file is damaged.") from None
        if end - start != expected and end <= data_size:
            raise SdLoraError(f"{path}: tensor {key!r} has shape {shape} ({expected} bytes of {info['dtype']}) but "
                              f"its data spans {end - start} bytes: the header is forged or damaged.")
        if end > data_size or end - start != expected:
            raise SdLoraError(f"{path}: tensor {key!r} needs bytes {start}..{end} of the data but the file holds "
                              f"{data_size}: the file is truncated. Re-download or re-export it.")
    return header


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    blob = path.read_bytes()
    header = _check_header(path, blob, len(blob))
    metadata = header.get("__metadata__") or {}
    try:
        tensors = load(blob)
    except SafetensorError as e:
        raise SdLoraError(f"{path}: safetensors could not read the file: {e}") from None
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def _looks_pickled(path: Path) -> bool:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    if path.suffix.lower() == ".safetensors":
        return False
    with open(path, "rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    if len(head) == 9 and struct.unpack("<Q", head[:8])[0] <= size - 8 and head[8:9] == b"{":
        return False  # a plausible safetensors header wins over a lookalike magic number
    # torch.save writes a zip archive; its legacy format starts with pickle protocol 2
    return head[:4] == _ZIP_MAGIC or head[:2] == b"\x80\x02"


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad or unsafe pickles
        # torch's message quotes the pickle's opcodes and names: file contents, never shown
        raise SdLoraError(f"{path}: could not load it as a pickled checkpoint of tensors (torch.load with "
                          f"weights_only=True refused it: {type(e).__name__}); it is damaged, not a checkpoint, or "
                          "holds more than tensors. Convert it to .safetensors where it was made.") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SdLoraError(f"{path}: the checkpoint is not a flat dictionary of tensors.")
    return {str(k): v for k, v in obj.items()}


def diffusers_lora_file(path: str | Path) -> Path:
    """The weights file of a diffusers LoRA folder (`pipe.save_lora_weights(dir)`); any other path as it is."""
    path = Path(path)
    if path.is_dir():
        for name in DIFFUSERS_LORA_FILES:
            if (path / name).is_file():
                return path / name
    return path


def read_tensor_file(path: str | Path, allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a .safetensors file, or of a pickled checkpoint when `allow_pickle`. A diffusers
    LoRA folder (what `save_lora_weights` writes) is read as its weights file."""
    path = diffusers_lora_file(path)
    if path.is_dir():
        raise SdLoraError(f"{path}: is a folder, but neither a peft adapter folder (adapter_config.json) nor a "
                          f"diffusers LoRA folder ({' or '.join(DIFFUSERS_LORA_FILES)}); give the adapter file")
    if not path.is_file():
        raise SdLoraError(f"{path}: no such file.")
    if _looks_pickled(path):
        if not allow_pickle:
            raise SdLoraError(
                f"{path}: this is a pickled PyTorch checkpoint; loading one can run arbitrary code, so it is "
                "refused. Convert it to .safetensors, or pass allow_pickle=True (--allow-pickle) if you trust it "
                "(it is then loaded with torch.load(weights_only=True)).")
        return _read_pickle(path), {}
    return _read_safetensors(path)


DTYPE_NAMES = _DTYPE_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
                torch.bool: "BOOL"}


def tensor_bytes(t: torch.Tensor) -> bytes:
    """A tensor's data as safetensors stores it (little-endian, C order)."""
    t = t.detach().to("cpu").contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def header_prefix(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> tuple[bytes, list[str]]:
    """(the file's first bytes: header length + header, the tensors' order in the data region) — the one layout
    sd-lora writes, in memory (`serialize`) or streamed (`sd_lora.tools.tensorfile`)."""
    bad = sorted(k for k, v in (metadata or {}).items() if not isinstance(v, str))
    if bad:
        raise SdLoraError(f"safetensors metadata values must be strings; not strings: {bad}")
    unknown = sorted(k for k, v in tensors.items() if v.dtype not in _DTYPE_NAMES)
    if unknown:
        raise SdLoraError(f"cannot write tensors of dtype {tensors[unknown[0]].dtype} ({unknown[:3]})")
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    # a value naming a file whose name is not UTF-8 (a dataset folder) is written with that byte as \xNN
    header: dict = {"__metadata__": {printable(k): printable(v) for k, v in sorted(metadata.items())}} \
        if metadata else {}
    offset = 0
    for key in order:
        t = tensors[key]
        n = t.numel() * t.element_size()
        header[key] = {"dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, order


def serialize(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> bytes:
    """safetensors bytes with a deterministic header (metadata keys sorted).

    The safetensors library writes metadata in hash-map order, which differs between calls, so a
    converted-and-back file would not be byte-identical; the layout here is the library's otherwise
    (tensors by dtype size then name, header padded with spaces to 8 bytes) and the library reads it.
    """
    prefix, order = header_prefix(tensors, metadata)
    return prefix + b"".join(tensor_bytes(tensors[key]) for key in order)


def read_header(path: str | Path) -> tuple[dict, dict[str, str], int]:
    """(tensor entries, metadata, where the data starts) of a safetensors file, reading only its header; every
    check of `read_tensor_file` (truncation, forged shapes, bad metadata) applies."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        head += f.read(min(n, max(0, size - 8)))
    header = _check_header(path, head, size)
    metadata = {str(k): str(v) for k, v in (header.pop("__metadata__", None) or {}).items()}
    return header, metadata, 8 + n


def data_region(blob: bytes) -> bytes:
    """The tensor bytes of a serialized safetensors file: everything after the length and the header."""
    (n,) = struct.unpack("<Q", blob[:8])
    return blob[8 + n:]


def write_safetensors(path: str | Path, blob: bytes) -> Path:
    """Write already-serialized bytes atomically (temp file + rename)."""
    return atomic_write_bytes(path, blob)


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Serialize `tensors` (+ string metadata) and write them atomically: the one way sd-lora writes a tensor file."""
    return write_safetensors(path, serialize(tensors, metadata))
