"""Content hash of an artifact's tensors, independent of the header and the manifest.

sha256 over a domain tag, then for every tensor in name order (Python string order):
    the line  json.dumps([name, dtype, shape]) + "\\n"   (compact separators; dtype as in safetensors)
    the data length as 8 bytes little-endian, then the raw little-endian data.
The same digest comes from torch tensors (when saving) and from a file's raw bytes (when verifying).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

import torch

DOMAIN_TAG = b"mncli-content/1\n"

# safetensors dtype names <-> torch dtypes, and element sizes in bytes
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
ITEMSIZE: dict[str, int] = {k: torch.empty(0, dtype=v).element_size() for k, v in DTYPES.items()}


def dtype_name(tensor: torch.Tensor) -> str:
    try:
        return DTYPE_NAMES[tensor.dtype]
    except KeyError:
        raise ValueError(f"dtype {tensor.dtype} cannot be stored in a .safetensors artifact") from None


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's raw data, row-major, as bytes (no copy when already contiguous on the CPU)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def _update(h: hashlib._Hash, name: str, dtype: str, shape: list[int], data: memoryview | bytes) -> None:
    h.update(json.dumps([name, dtype, shape], separators=(",", ":")).encode() + b"\n")
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)


def hash_entries(entries: Iterable[tuple[str, str, list[int], memoryview | bytes]]) -> str:
    """Digest of (name, dtype, shape, data) entries; they are sorted by name here."""
    h = hashlib.sha256(DOMAIN_TAG)
    for name, dtype, shape, data in sorted(entries, key=lambda e: e[0]):
        _update(h, name, dtype, list(shape), data)
    return h.hexdigest()


def content_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """The content hash of a tensor dict (what `save_artifact` records and `verify` recomputes)."""
    return hash_entries((name, dtype_name(t), list(t.shape), tensor_bytes(t)) for name, t in tensors.items())


def file_sha256(path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (checkpoints, recipes, a user's source file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
