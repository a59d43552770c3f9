"""Reading and writing artifacts: safetensors files whose `__metadata__` holds one key, "mncli".

The writer is our own (the safetensors format is 8 bytes of little-endian header length, a JSON
header, then the tensor data) so the bytes are fully determined by the inputs: header keys sorted,
compact JSON padded with spaces to 8 bytes, data ordered by element size then name (every tensor
aligned), zero-tensor files allowed. The safetensors library reads the result as a normal file.
Reading never unpickles, and turns every malformed input into one BadInput line. It opens the file
once: the safetensors library's own parser checks that open file (reopened by its /proc/self/fd
name), and header, manifest and tensor data are all read from it, so a reader racing an atomic
replacement sees one version whole. The header is then also refused for what the format forbids but
the library lets through (duplicate keys), and the manifest JSON for duplicate keys, NaN and nesting
deeper than MAX_DEPTH. Writers of one path rename the artifact and its sidecar into place under a
lock per output path (`output_lock`), so concurrent writers leave a pair from one of them.
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, NamedTuple

import safetensors
import torch

from mncli.artifact.hashing import DTYPES, ITEMSIZE, content_sha256, dtype_name, hash_entries, tensor_bytes
from mncli.artifact.manifest import (
    FORMAT,
    canonical_json,
    check_manifest,
    pretty_json,
    resolve_parent,
    seal_manifest,
)
from mncli.artifact.schema import validate
from mncli.artifact.tempfiles import make_temporary, output_lock
from mncli.errors import BadInput, RuntimeFailure
from mncli.text import one_line

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
    """Write every file to a temporary first, then rename them all into place (the data file first)
    under the lock of the first path, so that concurrent writers never mix their files."""
    temporaries: list[tuple[Path, Path]] = []
    try:
        for path, write in items:
            temporaries.append((_write_temporary(path, write), path))
        with output_lock(items[0][0]):
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
    manifest = seal_manifest({**manifest, "content_sha256": content_sha256(tensors)})
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

MAX_DEPTH = 128  # nesting of the manifest JSON: serde_json's limit, which the library applies to the header


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _not_a_constant(text: str) -> None:
    raise ValueError(f"{text} is not JSON")


def _loads(text: str) -> Any:
    """Strict JSON: duplicate keys, NaN/Infinity and numbers out of range are errors; RecursionError
    (nesting deeper than the interpreter can parse) comes out as ValueError."""
    try:
        return json.loads(
            text, object_pairs_hook=_no_duplicates, parse_float=_finite, parse_constant=_not_a_constant
        )
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in a parsed JSON value (iteratively: no recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            break
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _looks_pickled(head: bytes) -> bool:
    """Whether the file's first 9 bytes are a torch.save zip or a pickle (protocol 2-5), not the
    8-byte length of a safetensors header that starts with "{" (a length can begin 0x80 0x02)."""
    if head.startswith(b"PK\x03\x04"):
        return True
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5 and head[8:9] != b"{"


def _not_safetensors(path: Path, head: bytes, reason: str | None = None) -> BadInput:
    if _looks_pickled(head):
        return BadInput(
            f"{path}: not a safetensors file (it looks like a pickled PyTorch checkpoint)", hint=IMPORT_HINT
        )
    why = f"its header: {one_line(reason, 120)}" if reason else "or truncated"
    return BadInput(f"{path}: not a safetensors file ({why})", hint="is this an mncli artifact?")


def _open_file(path: Path) -> IO[bytes]:
    """The one open file every read of `path` works from. O_NONBLOCK so that a FIFO cannot hang us."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, NotADirectoryError):
        raise BadInput(f"{path}: no such file", hint="check the path") from None
    except PermissionError:
        raise BadInput(f"{path}: permission denied", hint="check the file's permissions") from None
    except OSError as exc:
        raise BadInput(f"{path}: cannot open: {exc.strerror or exc}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BadInput(f"{path}: not a file")
    return os.fdopen(fd, "rb")


def _reopen_path(f: IO[bytes], path: Path) -> str:
    """A name that opens the very file `f` is open on (not whatever `path` names by now)."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        if os.path.isdir(folder):
            return f"{folder}/{f.fileno()}"
    return str(path)  # no such folder on this system: the library opens the path itself


def _check_format(f: IO[bytes], path: Path, head: bytes, raw: bytes, size: int) -> None:
    """The safetensors library's own parser on the open file: BadInput unless it accepts it."""
    try:
        with safetensors.safe_open(_reopen_path(f, path), framework="numpy"):
            pass
    except Exception as exc:  # noqa: BLE001 - SafetensorError, or whatever else the parser raises
        raise _format_error(path, head, raw, size - 8 - len(raw), exc) from None


def _format_error(path: Path, head: bytes, raw: bytes, data_len: int, exc: Exception) -> BadInput:
    """One line for what the library refused, worded from the header where it parses as JSON."""
    reason = str(exc).partition(": ")[2] or str(exc) or type(exc).__name__
    try:
        header = _loads(raw.decode("utf-8"))
    except _DuplicateKey as dup:
        return BadInput(f"{path}: duplicate key {dup.key!r} in the safetensors header")
    except (UnicodeDecodeError, ValueError):
        return _not_safetensors(path, head, reason)
    if not isinstance(header, dict):
        return _not_safetensors(path, head, reason)
    if "not fully covered" in reason:
        ends = []
        for name, info in header.items():
            offsets = info.get("data_offsets") if isinstance(info, dict) and name != "__metadata__" else None
            if isinstance(offsets, list) and len(offsets) == 2 and isinstance(offsets[1], int):
                ends.append((offsets[1], name))
        end, name = max(ends, default=(0, None), key=lambda e: e[0])
        if end > data_len:
            return BadInput(
                f"{path}: truncated file (tensor {name!r} ends past the end of the file)",
                hint="the file was cut short; re-run the stage that wrote it",
            )
        if end < data_len:
            return BadInput(
                f"{path}: {data_len - end} bytes after the last tensor's data"
                " (the format forbids trailing bytes)"
            )
    reason = reason.removeprefix("invalid JSON in header: ")
    return BadInput(f"{path}: invalid safetensors header: {one_line(reason, 240)}")


def _read_header(f: IO[bytes], path: Path) -> tuple[dict, int, int]:
    """(header JSON, offset where the data starts, file size) of the open file, checked by the
    safetensors library, without reading any tensor data."""
    size = os.fstat(f.fileno()).st_size
    head = f.read(9)  # the length, and the first byte of the header it announces
    f.seek(8)
    if len(head) < 8:
        raise BadInput(f"{path}: truncated or empty file ({size} bytes)")
    length = int.from_bytes(head[:8], "little")
    if length > MAX_HEADER or 8 + length > size:
        raise _not_safetensors(path, head)
    raw = f.read(length)
    if len(raw) != length:
        raise _not_safetensors(path, head)
    _check_format(f, path, head, raw, size)
    try:  # the format forbids what the library lets through: duplicate keys
        header = _loads(raw.decode("utf-8"))
    except _DuplicateKey as dup:
        raise BadInput(f"{path}: duplicate key {dup.key!r} in the safetensors header") from None
    except (UnicodeDecodeError, ValueError):
        raise _not_safetensors(path, head) from None
    if not isinstance(header, dict):
        raise _not_safetensors(path, head)
    return header, 8 + length, size


def read_header(path: str | os.PathLike) -> tuple[dict, int, int]:
    """(header JSON, offset where the data starts, file size) without reading any tensor data."""
    path = Path(path)
    with _open_file(path) as f:
        return _read_header(f, path)


def _entries(header: dict, data_len: int, path: Path) -> list[tuple[str, str, list[int], int, int]]:
    """The tensor entries (name, dtype, shape, begin, end) of a header the library accepted."""
    out = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], list(info["shape"]), info["data_offsets"]
            ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in [*shape, begin, end])
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok or not begin <= end <= data_len:  # never, after the library's checks
            raise BadInput(f"{path}: malformed header entry for tensor {name!r}")
        if dtype not in ITEMSIZE:
            raise BadInput(
                f"{path}: tensor {name!r} has dtype {dtype}, which mncli does not read",
                hint=f"mncli reads {', '.join(ITEMSIZE)}",
            )
        out.append((name, dtype, shape, begin, end))
    return out


def _parse_manifest(header: dict, path: Path) -> Any:
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or KEY not in meta:
        raise BadInput(f"{path}: a safetensors file without an mncli manifest", hint=IMPORT_HINT)
    try:
        manifest = _loads(meta[KEY])
    except _DuplicateKey as dup:
        raise BadInput(f"{path}: duplicate key {dup.key!r} in the mncli manifest") from None
    except (TypeError, ValueError) as exc:
        raise BadInput(f"{path}: the mncli manifest is not valid JSON ({one_line(exc, 80)})") from None
    if _depth(manifest) > MAX_DEPTH:
        raise BadInput(f"{path}: the mncli manifest nests deeper than {MAX_DEPTH} levels")
    return manifest


class _Opened(NamedTuple):
    file: IO[bytes]
    manifest: Any  # as stored, not yet checked against the schema
    entries: list[tuple[str, str, list[int], int, int]]
    data_start: int
    size: int


@contextmanager
def _opened(path: Path) -> Iterator[_Opened]:
    """The artifact at `path`, opened once: header, manifest and (read from `file`) tensor data all
    come from the same file, so an atomic replacement meanwhile cannot mix two versions."""
    with _open_file(path) as f:
        header, data_start, size = _read_header(f, path)
        entries = _entries(header, size - data_start, path)
        yield _Opened(f, _parse_manifest(header, path), entries, data_start, size)


def read_raw(path: str | os.PathLike) -> tuple[Any, list[tuple[str, str, list[int], int, int]], int]:
    """(manifest as stored, unvalidated; tensor entries; data offset). BadInput unless the file is a
    well-formed safetensors file carrying an mncli manifest."""
    path = Path(path)
    with _opened(path) as art:
        return art.manifest, art.entries, art.data_start


def read_raw_data(path: str | os.PathLike) -> tuple[Any, list[tuple[str, str, list[int], bytearray]]]:
    """(manifest as stored, unvalidated; (name, dtype, shape, raw bytes) of every tensor), all read
    from one open file."""
    path = Path(path)
    with _opened(path) as art:
        return art.manifest, list(read_tensor_data(art.file, art.entries, art.data_start, path))


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest, read from the header only (no tensor data), checked against the schema."""
    manifest, _, _ = read_raw(path)
    return check_manifest(manifest, path)


def read_tensor_data(source: Path | IO[bytes], entries: list, data_start: int, path: Path | None = None):
    """Yield (name, dtype, shape, raw bytes) for each tensor in file order, from an open file (or a
    path, opened here: then the header it was read from may be another file's by now)."""
    if not hasattr(source, "readinto"):
        with _open_file(Path(source)) as f:
            yield from read_tensor_data(f, entries, data_start, Path(source))
        return
    for name, dtype, shape, begin, end in sorted(entries, key=lambda e: e[3]):
        source.seek(data_start + begin)
        buf = bytearray(end - begin)
        if source.readinto(buf) != len(buf):
            raise BadInput(f"{path or source.name}: truncated file while reading tensor {name!r}")
        yield name, dtype, shape, buf


def file_content_sha256(path: str | os.PathLike) -> str:
    """Recompute the content hash from the file's bytes."""
    _, raw = read_raw_data(path)
    return hash_entries((n, d, s, memoryview(b)) for n, d, s, b in raw)


def tensors_from_raw(
    raw: list[tuple[str, str, list[int], bytearray]], path: str | os.PathLike | None = None
) -> dict[str, torch.Tensor]:
    """Tensors over the buffers `read_tensor_data` yields (no copies), sorted by name. BadInput for a
    shape torch cannot hold (more dimensions than it allows, sizes whose strides overflow)."""
    tensors = {}
    for name, dtype, shape, buf in raw:
        try:
            if buf:
                tensors[name] = torch.frombuffer(buf, dtype=DTYPES[dtype]).reshape(shape)
            else:
                tensors[name] = torch.empty(shape, dtype=DTYPES[dtype])
        except (RuntimeError, ValueError, OverflowError, TypeError) as exc:
            where = f"{path}: " if path is not None else ""
            shown, why = one_line(shape, 80), one_line(exc, 80)
            raise BadInput(f"{where}tensor {name!r} of shape {shown} cannot be loaded: {why}") from None
    return dict(sorted(tensors.items()))


def load_artifact(path: str | os.PathLike, check_hash: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, manifest), both from one open file. Checks the schema and, unless told not to, the
    content hash."""
    path = Path(path)
    with _opened(path) as art:
        manifest = check_manifest(art.manifest, path)
        raw = list(read_tensor_data(art.file, art.entries, art.data_start, path))
    tensors = tensors_from_raw(raw, path)
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
    with _opened(path) as art:
        entries, data_start, size = art.entries, art.data_start, art.size
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
