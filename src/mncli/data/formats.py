"""Readers for the on-disk formats: IDX (MNIST, Fashion-MNIST; gzipped or not) and the CIFAR python
pickle batches as torchvision downloads them. Both return uint8 NCHW images and int64 labels."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import torch

from mncli.errors import BadInput

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def find_idx(folder: Path, stem: str) -> Path | None:
    """`stem` or `stem.gz` in `folder` (torchvision keeps both; prefer the uncompressed one)."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path) -> np.ndarray:
    """An IDX file as a numpy array of its declared shape and dtype."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:
        raise BadInput(f"cannot read IDX file {path}: {exc}", hint="re-download the dataset") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise BadInput(f"{path} is not an IDX file (bad magic number)", hint="re-download the dataset")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = raw[4 + 4 * ndim :]
    if len(body) != expected:
        raise BadInput(
            f"{path} is truncated: {len(body)} bytes of data, the header says {expected}",
            hint="re-download the dataset",
        )
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def load_idx_pair(folder: Path, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`{prefix}-images-idx3-ubyte` + `{prefix}-labels-idx1-ubyte` -> (N,1,H,W) uint8, (N,) int64."""
    images_path = find_idx(folder, f"{prefix}-images-idx3-ubyte")
    labels_path = find_idx(folder, f"{prefix}-labels-idx1-ubyte")
    if images_path is None or labels_path is None:
        raise BadInput(f"{folder} lacks the {prefix} IDX files", hint="re-download the dataset")
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise BadInput(
            f"{images_path.name} and {labels_path.name} do not match "
            f"(shapes {images.shape} and {labels.shape})",
            hint="re-download the dataset",
        )
    x = torch.from_numpy(images.astype(np.uint8, copy=True)).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR pickle batch. These files ARE Python pickles (that is the dataset's own format, the
    only place mncli unpickles anything) and only the dataset folder's fixed file names are read."""
    try:
        with open(path, "rb") as handle:
            entry = pickle.load(handle, encoding="latin1")  # noqa: S301 - CIFAR's published format
    except (OSError, pickle.UnpicklingError, EOFError) as exc:
        raise BadInput(f"cannot read CIFAR batch {path}: {exc}", hint="re-download the dataset") from None
    if not isinstance(entry, dict) or "data" not in entry or label_key not in entry:
        raise BadInput(f"{path} is not a CIFAR batch (no 'data'/{label_key!r})", hint="re-download it")
    data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return data, np.asarray(entry[label_key], dtype=np.int64)


def load_cifar(folder: Path, files: list[str], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [read_cifar_batch(folder / name, label_key) for name in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(images), torch.from_numpy(labels)
