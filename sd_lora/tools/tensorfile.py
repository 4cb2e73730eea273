"""safetensors files read and written one tensor at a time, with plain reads (no mmap), so the process's
memory holds the tensors it keeps and nothing else: a 1 GB adapter costs 1 GB to read, not 2.

Streaming over `formats.safetensors_io`, the one safetensors layer: its header checks (`read_header`) and its
layout (`header_prefix`: tensors by dtype size then name, compact JSON header padded with spaces to 8 bytes); the
hashes are `formats.metadata`'s (`sshs_model_hash`: SHA-256 of
the data region; `sshs_legacy_hash`: of file bytes 0x100000-0x10FFFF), computed while streaming.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from sd_lora.errors import SdLoraError
from sd_lora.formats import safetensors_io
from sd_lora.formats.safetensors_io import DTYPE_NAMES, header_prefix, tensor_bytes

__all__ = ["read_header", "read_tensors", "iter_tensors", "write_with_hashes", "data_sha256"]

NAMES = dict(DTYPE_NAMES)
DTYPES = {v: k for k, v in NAMES.items()}
_LEGACY = (0x100000, 0x110000)


def read_header(path: Path) -> tuple[dict, dict[str, str], int]:
    """(tensor entries, metadata, data start) of a safetensors file (safetensors_io's checks), refusing dtypes
    that torch cannot hold here (FP8 and unsigned ints wider than 8 bits)."""
    header, metadata, start = safetensors_io.read_header(path)
    for key, info in header.items():
        if info["dtype"] not in DTYPES:
            raise SdLoraError(f"{path}: header entry for tensor {key!r} is malformed or of an unsupported dtype "
                              f"({info['dtype']}).")
    return header, metadata, start


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


def write_with_hashes(f, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[int, str]:
    """Write `tensors` to the open binary file `f` with sshs_model_hash / sshs_legacy_hash in the metadata;
    returns (bytes written, the data's SHA-256). Tensors become bytes one at a time (twice: hash, then write)."""
    draft = {**metadata, "sshs_model_hash": "0" * 64, "sshs_legacy_hash": "0" * 8}
    prefix, order = header_prefix(tensors, draft)
    digest, window, pos = hashlib.sha256(), bytearray(), 0

    def capture(chunk: bytes, at: int) -> None:
        lo, hi = max(_LEGACY[0], at), min(_LEGACY[1], at + len(chunk))
        if lo < hi:
            window.extend(chunk[lo - at:hi - at])

    capture(prefix, 0)
    pos = len(prefix)
    for key in order:
        data = tensor_bytes(tensors[key])
        digest.update(data)
        capture(data, pos)
        pos += len(data)
    final = {**metadata, "sshs_model_hash": digest.hexdigest(),
             "sshs_legacy_hash": hashlib.sha256(bytes(window)).hexdigest()[:8]}
    prefix2, _ = header_prefix(tensors, final)
    if len(prefix2) != len(prefix):
        raise SdLoraError("internal error: the header length changed with the hashes")
    f.write(prefix2)
    for key in order:
        f.write(tensor_bytes(tensors[key]))
    return pos, final["sshs_model_hash"]


def data_sha256(path: Path, start: int, chunk: int = 16 << 20) -> str:
    """SHA-256 of a file's bytes from `start` on (the data region: `sshs_model_hash`), read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
