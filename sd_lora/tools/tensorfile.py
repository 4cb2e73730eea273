"""safetensors files read and written one tensor at a time, with plain reads (no mmap), so the process's
memory holds the tensors it keeps and nothing else: a 1 GB adapter costs 1 GB to read, not 2.

The layout written is `formats.safetensors_io.serialize`'s (tensors by dtype size then name, compact JSON
header padded with spaces to 8 bytes), and the hashes are `formats.metadata`'s (`sshs_model_hash`: SHA-256 of
the data region; `sshs_legacy_hash`: of file bytes 0x100000-0x10FFFF), computed while streaming.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import torch

from sd_lora.errors import SdLoraError

__all__ = ["read_header", "read_tensors", "iter_tensors", "write_with_hashes", "data_sha256"]

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
NAMES = {v: k for k, v in DTYPES.items()}
_LEGACY = (0x100000, 0x110000)


def read_header(path: Path) -> tuple[dict, dict[str, str], int]:
    """(tensor entries, metadata, data start) of a safetensors file, with clear errors for damaged files."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SdLoraError(f"{path}: file is truncated ({size} bytes); not a safetensors file.")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise SdLoraError(f"{path}: the header length in its first 8 bytes is larger than the file: "
                              "truncated or not safetensors.")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            where = f"byte {e.start}" if isinstance(e, UnicodeDecodeError) else f"character {e.pos}"
            raise SdLoraError(f"{path}: the safetensors header is not valid JSON (at {where}).") from None
    if not isinstance(header, dict):
        raise SdLoraError(f"{path}: the safetensors header is not a JSON object.")
    metadata = {str(k): str(v) for k, v in (header.pop("__metadata__", None) or {}).items()}
    for key, info in header.items():
        try:
            a, b = info["data_offsets"]
            want = int(torch.Size(info["shape"]).numel()) * torch.empty((), dtype=DTYPES[info["dtype"]]).element_size()
        except (KeyError, TypeError, ValueError):
            raise SdLoraError(f"{path}: header entry for tensor {key!r} is malformed or of an unsupported "
                              "dtype.") from None
        if b - a != want or 8 + n + b > size:
            raise SdLoraError(f"{path}: tensor {key!r} lies outside the file: the file is truncated.")
    return header, metadata, 8 + n


def iter_tensors(path: Path, header: dict, start: int, keys=None):
    """(key, tensor) in file order, each read on its own."""
    keys = sorted(keys if keys is not None else header, key=lambda k: header[k]["data_offsets"][0])
    with open(path, "rb") as f:
        for key in keys:
            info = header[key]
            a, b = info["data_offsets"]
            f.seek(start + a)
            raw = bytearray(b - a)
            if f.readinto(raw) != b - a:
                raise SdLoraError(f"{path}: tensor {key!r} could not be read whole (the file changed or is truncated).")
            dtype = DTYPES[info["dtype"]]
            t = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            yield key, t.reshape(info["shape"])


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    header, metadata, start = read_header(path)
    return dict(iter_tensors(path, header, start)), metadata


def _bytes(t: torch.Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _header(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[bytes, list[str]]:
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    header: dict = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
    offset = 0
    for key in order:
        t = tensors[key]
        n = t.numel() * t.element_size()
        header[key] = {"dtype": NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, order


def write_with_hashes(f, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[int, str]:
    """Write `tensors` to the open binary file `f` with sshs_model_hash / sshs_legacy_hash in the metadata;
    returns (bytes written, the data's SHA-256). Tensors become bytes one at a time (twice: hash, then write)."""
    draft = {**metadata, "sshs_model_hash": "0" * 64, "sshs_legacy_hash": "0" * 8}
    prefix, order = _header(tensors, draft)
    digest, window, pos = hashlib.sha256(), bytearray(), 0

    def capture(chunk: bytes, at: int) -> None:
        lo, hi = max(_LEGACY[0], at), min(_LEGACY[1], at + len(chunk))
        if lo < hi:
            window.extend(chunk[lo - at:hi - at])

    capture(prefix, 0)
    pos = len(prefix)
    for key in order:
        data = _bytes(tensors[key])
        digest.update(data)
        capture(data, pos)
        pos += len(data)
    final = {**metadata, "sshs_model_hash": digest.hexdigest(),
             "sshs_legacy_hash": hashlib.sha256(bytes(window)).hexdigest()[:8]}
    prefix2, _ = _header(tensors, final)
    if len(prefix2) != len(prefix):
        raise SdLoraError("internal error: the header length changed with the hashes")
    f.write(prefix2)
    for key in order:
        f.write(_bytes(tensors[key]))
    return pos, final["sshs_model_hash"]


def data_sha256(path: Path, start: int, chunk: int = 16 << 20) -> str:
    """SHA-256 of a file's bytes from `start` on (the data region: `sshs_model_hash`), read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
