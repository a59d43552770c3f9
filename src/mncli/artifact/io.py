"""Reading and writing artifacts: safetensors files whose `__metadata__` holds one key, "mncli".

The writer is our own (the safetensors format is 8 bytes of little-endian header length, a JSON
header, then the tensor data) so the bytes are fully determined by the inputs: header keys sorted,
compact JSON padded with spaces to 8 bytes, data ordered by element size then name (every tensor
aligned), zero-tensor files allowed. The safetensors library reads the result as a normal file.
Reading parses the header ourselves, never unpickles, and turns every malformed input into one
BadInput line.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from mncli.artifact.hashing import DTYPES, ITEMSIZE, content_sha256, dtype_name, hash_entries, tensor_bytes
from mncli.artifact.manifest import FORMAT, canonical_json, check_manifest, pretty_json, resolve_parent
from mncli.artifact.schema import validate
from mncli.artifact.tempfiles import make_temporary
from mncli.errors import BadInput, RuntimeFailure

MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit
KEY = "mncli"
IMPORT_HINT = "foreign weights come in with `mncli import CHECKPOINT --arch NAME -o ART.safetensors`"


def sidecar_path(path: str | os.PathLike) -> Path:
    """NAME.safetensors -> NAME.manifest.json (the human copy of the manifest)."""
    p = Path(path)
    return p.with_name(p.name.removesuffix(".safetensors") + ".manifest.json")


# ---------------------------------------------------------------- writing


def check_output(out: str | os.PathLike, *inputs: str | os.PathLike | None, artifact: bool = True) -> None:
    """BadInput, before any work, for an output a stage must not or cannot write: one of its inputs
    or their sidecars (same path, or a hard link to the same file), a directory, a path below a
    file or in a folder it cannot write, or (for an artifact) an existing file that is not an mncli
    artifact. An existing artifact at OUT is replaced, atomically, once the stage has succeeded."""
    out = Path(out)
    written = [out, sidecar_path(out)] if artifact else [out]
    for given in inputs:
        if given is None:
            continue
        source = Path(given)
        for target in written:
            for protected in (source, sidecar_path(source)):
                if _same_file(target, protected):
                    what = "the input file" if protected == source else "the input's manifest"
                    raise BadInput(
                        f"output {out} would overwrite {what} {protected}",
                        hint="write to a new path; inputs are never modified",
                    )
    if out.is_dir():
        raise BadInput(f"output {out} is a directory", hint="give a file path, e.g. -o DIR/model.safetensors")
    folder = _existing_ancestor(out.parent)
    if not folder.is_dir():
        raise BadInput(f"output {out}: {folder} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BadInput(f"output {out}: cannot write in {folder}", hint="choose a folder you can write to")
    if artifact:
        _refuse_replacing_foreign_files(out)


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)


def _existing_ancestor(folder: Path) -> Path:
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _refuse_replacing_foreign_files(out: Path) -> None:
    """Never replace what is not an mncli artifact (or its sidecar) with one."""
    if out.exists():
        try:
            read_manifest(out)
        except BadInput:
            raise BadInput(
                f"output {out} exists and is not an mncli artifact; refusing to replace it",
                hint="choose another -o path, or move that file away",
            ) from None
    side = sidecar_path(out)
    if side.exists() and not out.exists():
        raise BadInput(
            f"{side} exists without the artifact {out}; refusing to replace it",
            hint="choose another -o path, or move that file away",
        )


def _write_temporary(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a fsynced temporary file beside `path`; on any failure remove it again."""
    fd, tmp = make_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _atomic_write_files(items: list[tuple[Path, Callable[[IO[bytes]], None]]]) -> None:
    """Write every file to a temporary first, then rename them all into place (the data file first)."""
    temporaries: list[tuple[Path, Path]] = []
    try:
        for path, write in items:
            temporaries.append((_write_temporary(path, write), path))
        for tmp, path in temporaries:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in temporaries:
            tmp.unlink(missing_ok=True)
        raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _header_bytes(tensors: dict[str, torch.Tensor], manifest_json: str) -> tuple[bytes, list[str]]:
    order = sorted(tensors, key=lambda n: (-tensors[n].element_size(), n))
    header: dict[str, Any] = {"__metadata__": {KEY: manifest_json}}
    offset = 0
    for name in order:
        t = tensors[name]
        size = t.numel() * t.element_size()
        header[name] = {
            "dtype": dtype_name(t),
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw, order


def _refuse_overwriting_parents(path: Path, manifest: dict) -> None:
    for parent in manifest.get("parents") or []:
        found = resolve_parent(path, str(parent.get("path", "")), by_name=False)
        if found is not None and path.exists() and os.path.samefile(found, path):
            raise BadInput(
                f"refusing to write the output over its input {found}",
                hint="choose another -o/--out path; stages never modify their input",
            )


def save_artifact(path: str | os.PathLike, tensors: dict[str, torch.Tensor], manifest: dict) -> dict:
    """Write `tensors` and `manifest` (plus `content_sha256`) to `path` atomically, then the sidecar
    NAME.manifest.json. Returns the manifest as written. Refuses to overwrite a parent."""
    path = Path(path)
    if "__metadata__" in tensors or any(not isinstance(n, str) for n in tensors):
        raise RuntimeFailure("tensor names must be strings other than '__metadata__'")
    _refuse_overwriting_parents(path, manifest)
    manifest = {**manifest, "content_sha256": content_sha256(tensors)}
    manifest.setdefault("format", FORMAT)
    try:
        written = json.loads(canonical_json(manifest))
    except (TypeError, ValueError) as exc:
        raise RuntimeFailure(f"the manifest is not JSON: {exc}") from None
    errors = validate(written)
    if errors:  # the calling stage's bug, not the user's input
        raise RuntimeFailure(f"refusing to write an invalid manifest: {errors[0]}")
    header, order = _header_bytes(tensors, canonical_json(written))

    def write_file(f: IO[bytes]) -> None:
        f.write(header)
        for name in order:
            f.write(tensor_bytes(tensors[name]))

    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_files(
        [(path, write_file), (sidecar_path(path), lambda f: f.write(pretty_json(written).encode()))]
    )
    _fsync_dir(path.parent)
    return written


# ---------------------------------------------------------------- reading


def _not_safetensors(path: Path, head: bytes) -> BadInput:
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return BadInput(
            f"{path}: not a safetensors file (it looks like a pickled PyTorch checkpoint)", hint=IMPORT_HINT
        )
    return BadInput(f"{path}: not a safetensors file (or truncated)", hint="is this an mncli artifact?")


def read_header(path: str | os.PathLike) -> tuple[dict, int, int]:
    """(header JSON, offset where the data starts, file size) without reading any tensor data."""
    path = Path(path)
    if not path.exists():
        raise BadInput(f"{path}: no such file", hint="check the path")
    if not path.is_file():
        raise BadInput(f"{path}: not a file")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise BadInput(f"{path}: truncated or empty file ({size} bytes)")
        length = int.from_bytes(head, "little")
        if length > MAX_HEADER or 8 + length > size:
            raise _not_safetensors(path, head)
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _not_safetensors(path, head) from None
    if not isinstance(header, dict):
        raise _not_safetensors(path, head)
    return header, 8 + length, size


def _entries(header: dict, data_len: int, path: Path) -> list[tuple[str, str, list[int], int, int]]:
    """The tensor entries (name, dtype, shape, begin, end), checked against the data length."""
    out = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], list(info["shape"]), info["data_offsets"]
            ok = dtype in ITEMSIZE and all(isinstance(d, int) and d >= 0 for d in shape)
            ok = ok and isinstance(begin, int) and 0 <= begin <= end
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise BadInput(f"{path}: malformed header entry for tensor {name!r}")
        if end - begin != math.prod(shape) * ITEMSIZE[dtype]:
            raise BadInput(f"{path}: tensor {name!r} has {end - begin} bytes for shape {shape} {dtype}")
        if end > data_len:
            raise BadInput(
                f"{path}: truncated file (tensor {name!r} ends past the end of the file)",
                hint="the file was cut short; re-run the stage that wrote it",
            )
        out.append((name, dtype, shape, begin, end))
    return out


def read_raw(path: str | os.PathLike) -> tuple[Any, list[tuple[str, str, list[int], int, int]], int]:
    """(manifest as stored, unvalidated; tensor entries; data offset). BadInput unless the file is a
    well-formed safetensors file carrying an mncli manifest."""
    path = Path(path)
    header, data_start, size = read_header(path)
    entries = _entries(header, size - data_start, path)
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or KEY not in meta:
        raise BadInput(f"{path}: a safetensors file without an mncli manifest", hint=IMPORT_HINT)
    try:
        manifest = json.loads(meta[KEY])
    except (TypeError, ValueError):
        raise BadInput(f"{path}: the mncli manifest is not valid JSON") from None
    return manifest, entries, data_start


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest, read from the header only (no tensor data), checked against the schema."""
    manifest, _, _ = read_raw(path)
    return check_manifest(manifest, path)


def read_tensor_data(path: Path, entries: list, data_start: int):
    """Yield (name, dtype, shape, raw bytes) for each tensor in file order."""
    with path.open("rb") as f:
        for name, dtype, shape, begin, end in sorted(entries, key=lambda e: e[3]):
            f.seek(data_start + begin)
            buf = bytearray(end - begin)
            if f.readinto(buf) != len(buf):
                raise BadInput(f"{path}: truncated file while reading tensor {name!r}")
            yield name, dtype, shape, buf


def file_content_sha256(path: str | os.PathLike) -> str:
    """Recompute the content hash from the file's bytes."""
    _, entries, data_start = read_raw(path)
    return hash_entries(
        (n, d, s, memoryview(b)) for n, d, s, b in read_tensor_data(Path(path), entries, data_start)
    )


def tensors_from_raw(raw: list[tuple[str, str, list[int], bytearray]]) -> dict[str, torch.Tensor]:
    """Tensors over the buffers `read_tensor_data` yields (no copies), sorted by name."""
    tensors = {}
    for name, dtype, shape, buf in raw:
        if buf:
            tensors[name] = torch.frombuffer(buf, dtype=DTYPES[dtype]).reshape(shape)
        else:
            tensors[name] = torch.empty(shape, dtype=DTYPES[dtype])
    return dict(sorted(tensors.items()))


def load_artifact(path: str | os.PathLike, check_hash: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, manifest). Checks the schema and, unless told not to, the content hash."""
    path = Path(path)
    manifest, entries, data_start = read_raw(path)
    check_manifest(manifest, path)
    tensors = tensors_from_raw(list(read_tensor_data(path, entries, data_start)))
    if check_hash and content_sha256(tensors) != manifest["content_sha256"]:
        raise BadInput(
            f"{path}: content hash mismatch (the tensor data was altered or corrupted)",
            hint=f"`mncli verify {path}` for details",
        )
    return tensors, manifest


def file_report(path: str | os.PathLike) -> dict:
    """Bytes on disk, per tensor and per stored group (`W::mask`, `W::codes`, ... count towards W;
    `W::shape` is layout, counted apart), from the header alone."""
    path = Path(path)
    _, entries, data_start = read_raw(path)
    size = path.stat().st_size
    tensors = [{"name": n, "dtype": d, "shape": s, "bytes": e - b} for n, d, s, b, e in sorted(entries)]
    groups: dict[str, dict[str, int]] = {}
    for t in tensors:
        base, _, part = t["name"].partition("::")
        g = groups.setdefault(base, {"bytes": 0, "layout_bytes": 0})
        g["layout_bytes" if part == "shape" else "bytes"] += t["bytes"]
    return {
        "path": str(path),
        "file_bytes": size,
        "header_bytes": data_start,
        "data_bytes": size - data_start,
        "tensors": tensors,
        "groups": groups,
    }
