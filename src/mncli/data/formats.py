"""Readers for the on-disk formats: IDX (MNIST, Fashion-MNIST; gzipped or not) and the CIFAR python
pickle batches as torchvision downloads them. Both return uint8 NCHW images and int64 labels.

Nothing a data file holds is ever run: CIFAR's batches are pickles, read by `SafeUnpickler`, which
builds only builtin containers, bytes, strings, numbers and numpy arrays of plain numeric dtypes and
refuses every other global a pickle names (os.system, builtins.eval, ...) with BadInput."""

from __future__ import annotations

import copyreg
import gzip
import io
import math
import pickle
import pickletools
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from mncli.errors import BadInput

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_REDOWNLOAD = "re-download the dataset"
_CHUNK = 1 << 20


def find_idx(folder: Path, stem: str) -> Path | None:
    """`stem` or `stem.gz` in `folder` (torchvision keeps both; prefer the uncompressed one)."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_up_to(handle, limit: int) -> bytes:
    """At most `limit` bytes, read in chunks, so a header declaring a huge size allocates nothing."""
    chunks, total = [], 0
    while total < limit:
        chunk = handle.read(min(_CHUNK, limit - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file as a numpy array of its declared shape and dtype. Anything that is not a whole IDX
    file (a cut or corrupt header or gzip stream, missing or extra data) is BadInput naming it."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            magic = _read_up_to(handle, 4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES:
                raise BadInput(f"{path} is not an IDX file (bad magic number)", hint=_REDOWNLOAD)
            ndim = magic[3]
            header = _read_up_to(handle, 4 * ndim)
            if len(header) < 4 * ndim:
                raise BadInput(
                    f"{path} is cut inside its header ({4 + len(header)} of {4 + 4 * ndim} bytes)",
                    hint=_REDOWNLOAD,
                )
            dims = struct.unpack(f">{ndim}I", header)
            dtype = np.dtype(_IDX_DTYPES[magic[2]])
            expected = math.prod(dims) * dtype.itemsize
            body = _read_up_to(handle, expected + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise BadInput(f"cannot read IDX file {path}: {exc}", hint=_REDOWNLOAD) from None
    if len(body) < expected:
        raise BadInput(
            f"{path} is truncated: {len(body)} bytes of data, the header says {expected}",
            hint=_REDOWNLOAD,
        )
    if len(body) > expected:
        raise BadInput(f"{path} has data past the {expected} bytes its header declares", hint=_REDOWNLOAD)
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def load_idx_pair(folder: Path, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`{prefix}-images-idx3-ubyte` + `{prefix}-labels-idx1-ubyte` -> (N,1,H,W) uint8, (N,) int64."""
    images_path = find_idx(folder, f"{prefix}-images-idx3-ubyte")
    labels_path = find_idx(folder, f"{prefix}-labels-idx1-ubyte")
    if images_path is None or labels_path is None:
        raise BadInput(f"{folder} lacks the {prefix} IDX files", hint=_REDOWNLOAD)
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    for path, array in ((images_path, images), (labels_path, labels)):
        if array.dtype != np.uint8:
            raise BadInput(
                f"{path} holds {array.dtype} values; MNIST-style images and labels are unsigned bytes",
                hint=_REDOWNLOAD,
            )
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise BadInput(
            f"{images_path.name} and {labels_path.name} do not match "
            f"(shapes {images.shape} and {labels.shape})",
            hint=_REDOWNLOAD,
        )
    x = torch.from_numpy(images.astype(np.uint8, copy=True)).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


# --- CIFAR: pickles, read by an unpickler that can build data and nothing else --------------------

_SAFE_KINDS = "biufcSU"  # bool, integers, floats, complex, bytes, str: never object, void or datetime


def _numpy_internals():
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric
    return multiarray, numeric


def _safe_dtype(spec, *args):
    dtype = np.dtype(spec, *args)
    if dtype.kind not in _SAFE_KINDS or dtype.hasobject:
        raise pickle.UnpicklingError(f"refused numpy dtype {dtype}")
    return dtype


def _safe_reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError("refused an ndarray subclass")
    multiarray, _ = _numpy_internals()
    return multiarray._reconstruct(np.ndarray, shape, _safe_dtype(dtype))


def _safe_scalar(dtype, *args):
    multiarray, _ = _numpy_internals()
    return multiarray.scalar(_safe_dtype(dtype), *args)


def _safe_frombuffer(buffer, dtype, shape, order):
    _, numeric = _numpy_internals()
    if not isinstance(buffer, bytes | bytearray | pickle.PickleBuffer):
        raise pickle.UnpicklingError("refused a numpy buffer that is not bytes")
    return numeric._frombuffer(buffer, _safe_dtype(dtype), shape, order)


def _latin1_encode(text, encoding="utf-8", *rest):
    """`_codecs.encode(str, "latin1")`: how a protocol-2 pickle written by Python 3 holds bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or rest:
        raise pickle.UnpicklingError("refused _codecs.encode other than str -> latin1 bytes")
    return text.encode("latin1")


def _admitted() -> dict[tuple[str, str], object]:
    """Every global a CIFAR batch may name, by the (module, name) written in the pickle: numpy's
    array, dtype and scalar reconstructors under numpy 1 and 2 names (the published batches, written
    by Python 2 and numpy 1, name numpy.core.multiarray._reconstruct, numpy.ndarray, numpy.dtype),
    and the builtins some pickle protocols spell as globals. Each maps to a checked stand-in."""
    admitted: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _safe_dtype,
    }
    for core in ("numpy.core", "numpy._core"):
        admitted[(f"{core}.multiarray", "_reconstruct")] = _safe_reconstruct
        admitted[(f"{core}.multiarray", "scalar")] = _safe_scalar
        admitted[(f"{core}.numeric", "_frombuffer")] = _safe_frombuffer
    for module in ("builtins", "__builtin__"):
        for name, obj in (
            ("set", set),
            ("frozenset", frozenset),
            ("bytearray", bytearray),
            ("complex", complex),
        ):
            admitted[(module, name)] = obj
    admitted[("_codecs", "encode")] = _latin1_encode
    return admitted


class SafeUnpickler(pickle.Unpickler):
    """A pickle reader that admits only what a CIFAR batch holds; any other global is refused, so
    loading cannot call os.system, eval, subprocess or anything else a hostile file names."""

    _ADMITTED = _admitted()

    def find_class(self, module: str, name: str):
        try:
            return self._ADMITTED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused a persistent id")


def _refuse_extension_codes(raw: bytes) -> None:
    """The EXT opcodes fetch an object registered with copyreg from a process-wide cache without
    asking find_class. No code is registered unless some library calls copyreg.add_extension; when
    one is, refuse pickles that use them (scanning costs a tenth of a second per batch)."""
    if copyreg._inverted_registry:
        for opcode, _, _ in pickletools.genops(raw):
            if opcode.name.startswith("EXT"):
                raise pickle.UnpicklingError("refused a copyreg extension code")


def safe_unpickle(raw: bytes):
    """The object a pickle holds, built by SafeUnpickler. Any failure (a refused global or a malformed
    stream: the unpickler can raise many exception types) is pickle.UnpicklingError."""
    try:
        _refuse_extension_codes(raw)
        return SafeUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except pickle.UnpicklingError:
        raise
    except Exception as exc:  # noqa: BLE001 - malformed pickles raise anything; none of it ran code
        raise pickle.UnpicklingError(f"{type(exc).__name__}: {exc}") from None


def read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR pickle batch (the dataset's own format), read with `SafeUnpickler`: a batch that names
    anything but data (numpy arrays, containers, strings, numbers) is refused, never run."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read CIFAR batch {path}: {exc}", hint=_REDOWNLOAD) from None
    try:
        entry = safe_unpickle(raw)
    except pickle.UnpicklingError as exc:
        raise BadInput(f"{path} is not a CIFAR batch: {exc}", hint=_REDOWNLOAD) from None
    if not isinstance(entry, dict) or "data" not in entry or label_key not in entry:
        raise BadInput(f"{path} is not a CIFAR batch (no 'data'/{label_key!r})", hint="re-download it")
    return _cifar_arrays(path, entry["data"], entry[label_key])


def _cifar_arrays(path: Path, data, labels) -> tuple[np.ndarray, np.ndarray]:
    """The batch's images as uint8 (N,3,32,32) and labels as int64 (N,), or BadInput naming `path`."""
    problem = None
    try:
        if not isinstance(data, np.ndarray) or data.dtype.kind not in "ui":
            problem = "its 'data' is not an array of bytes"
        elif data.dtype != np.uint8 and data.size and (data.min() < 0 or data.max() > 255):
            problem = "its 'data' holds values outside 0..255"
        elif data.size % (3 * 32 * 32):
            problem = f"its 'data' has {data.size} values, not a whole number of 3x32x32 images"
        else:
            labels = np.asarray(labels)
            if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "ui"):
                problem = "its labels are not a list of integers"
            elif len(labels) != data.size // (3 * 32 * 32):
                problem = f"it has {data.size // 3072} images and {len(labels)} labels"
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError):
        problem = "its labels are not a list of integers"
    if problem:
        raise BadInput(f"{path} is not a CIFAR batch: {problem}", hint=_REDOWNLOAD)
    images = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)
    return images, np.asarray(labels, dtype=np.int64)


def load_cifar(folder: Path, files: list[str], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [read_cifar_batch(folder / name, label_key) for name in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(images), torch.from_numpy(labels)
