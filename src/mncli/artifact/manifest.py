"""The manifest: building one, its canonical JSON form, validation, parents and lineage.

The manifest lives inside the artifact (safetensors `__metadata__["mncli"]`, canonical JSON: sorted
keys, compact separators, ASCII, no NaN) and, pretty-printed, in the sidecar NAME.manifest.json. It
holds no timestamps or host names, so a deterministic stage writes identical bytes.

The manifest is sealed: `manifest_sha256` is a SHA-256 over its canonical JSON without that key
(`seal_manifest`, called by save_artifact), so an edit of the manifest, in the file or in the
sidecar, shows in `seal_status`. The seal is evidence of tampering, not a signature: whoever
rewrites the manifest can recompute it, which `mncli verify --reproduce` catches by measuring the
claims again. Manifests written before sealing have no seal and are reported as "not sealed".
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

from mncli.artifact.schema import validate
from mncli.errors import BadInput, RuntimeFailure
from mncli.version import __version__

FORMAT = "mncli/1"
SEAL_KEY = "manifest_sha256"
SEAL_TAG = b"mncli-manifest/1\n"


def jsonable(value: Any) -> Any:
    """Plain JSON values: tuples -> lists, numpy/torch scalars -> numbers, paths -> str, NaN/inf -> None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()  # numpy / torch scalars
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def canonical_json(manifest: dict) -> str:
    """The one byte-stable text of a manifest."""
    return json.dumps(
        jsonable(manifest), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def manifest_digest(manifest: dict) -> str:
    """The seal of a manifest: sha256 over a domain tag and its canonical JSON without `SEAL_KEY`.
    ValueError, TypeError or RecursionError when the manifest is not JSON."""
    body = {k: v for k, v in manifest.items() if k != SEAL_KEY}
    return hashlib.sha256(SEAL_TAG + canonical_json(body).encode()).hexdigest()


def seal_manifest(manifest: dict) -> dict:
    """The manifest with `format` filled in (when absent) and `manifest_sha256` set to its seal; any
    old seal is replaced. RuntimeFailure when the manifest is not JSON (the calling stage's bug)."""
    manifest = {"format": FORMAT, **manifest}
    try:
        return {**manifest, SEAL_KEY: manifest_digest(manifest)}
    except (TypeError, ValueError, RecursionError) as exc:
        raise RuntimeFailure(f"the manifest is not JSON: {exc}") from None


def seal_status(manifest: Any) -> dict:
    """Whether the manifest is as written: {"status", "ok", "recorded", "computed"}. status "ok"; "not
    sealed" (no `manifest_sha256`: written before manifests were sealed; ok, its claims unchecked);
    "mismatch" (edited after it was written); "unreadable" (not canonicalisable JSON)."""
    recorded = manifest.get(SEAL_KEY) if isinstance(manifest, dict) else None
    out: dict[str, Any] = {"status": "not sealed", "ok": True, "recorded": recorded, "computed": None}
    if not isinstance(manifest, dict) or SEAL_KEY not in manifest:
        return out
    try:
        out["computed"] = manifest_digest(manifest)
    except (TypeError, ValueError, RecursionError):
        return {**out, "status": "unreadable", "ok": False}
    ok = recorded == out["computed"]
    return {**out, "status": "ok" if ok else "mismatch", "ok": ok}


def _short(value: Any, width: int = 40) -> str:
    try:
        text = json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= width else text[: width - 3] + "..."


def first_difference(
    a: Any, b: Any, names: tuple[str, str] = ("first", "second"), where: str = ""
) -> str | None:
    """Where two JSON values first differ (keys in sorted order), as 'metrics.test_acc: 0.99 in the
    file, 0.41 in the sidecar' with names=("file", "sidecar"); None when they are equal."""
    try:
        if a == b:
            return None
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b), key=str):
                at = f"{where}.{key}" if where else str(key)
                if key not in a or key not in b:
                    return f"{at}: only in the {names[0] if key in a else names[1]}"
                found = first_difference(a[key], b[key], names, at)
                if found:
                    return found
        if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                found = first_difference(x, y, names, f"{where}[{i}]")
                if found:
                    return found
    except RecursionError:
        return f"{where or 'manifest'}: too deeply nested to compare"
    return f"{where or 'manifest'}: {_short(a)} in the {names[0]}, {_short(b)} in the {names[1]}"


def pretty_json(manifest: dict) -> str:
    return (
        json.dumps(jsonable(manifest), sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    )


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def env_info(device: str | None = None) -> dict[str, str | None]:
    """Versions that produced an artifact (no host names, no times)."""
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "numpy": _version("numpy"),
        "safetensors": _version("safetensors"),
        "mncli": __version__,
        "device": device,
    }


def command_line() -> str:
    """How this process was started, as `mncli ARGS...` when run from the console script."""
    if Path(sys.argv[0]).name == "mncli":
        return shlex.join(["mncli", *sys.argv[1:]])
    return shlex.join(sys.argv)


def new_manifest(
    stage: str,
    *,
    arch: dict,
    params: dict | None = None,
    seed: int | None = None,
    parents: list[dict] | None = None,
    lineage: list[dict] | None = None,
    data: dict | None = None,
    metrics: dict | None = None,
    compression: dict | None = None,
    command: str | None = None,
    device: str | None = None,
) -> dict:
    """A complete manifest (save_artifact adds `content_sha256` and the seal `manifest_sha256`).
    `parents` come from `parent_entry`; `lineage` defaults to the parents' lineages, then the parents."""
    return {
        "format": FORMAT,
        "stage": stage,
        "mncli_version": __version__,
        "command": command_line() if command is None else command,
        "params": params or {},
        "seed": seed,
        "arch": arch,
        "parents": parents or [],
        "lineage": lineage if lineage is not None else [],
        "data": data,
        "metrics": metrics or {},
        "compression": compression or {},
        "env": env_info(device),
    }


def parent_entry(parent_path: str | os.PathLike, parent_manifest: dict, out_path: str | os.PathLike) -> dict:
    """How an output records one input: its path relative to the output's directory, hash, stage."""
    rel = os.path.relpath(os.path.abspath(parent_path), os.path.dirname(os.path.abspath(out_path)))
    return {
        "path": Path(rel).as_posix(),
        "content_sha256": parent_manifest["content_sha256"],
        "stage": parent_manifest["stage"],
    }


def lineage_from(parents: list[tuple[dict, dict]]) -> list[dict]:
    """Ancestors of an output: each parent's lineage, then the parent itself, without repeats.
    `parents` holds (parent_entry, parent_manifest) pairs."""
    out: list[dict] = []
    seen: set[str] = set()
    for entry, manifest in parents:
        for item in [*manifest.get("lineage", []), entry]:
            if item["content_sha256"] not in seen:
                seen.add(item["content_sha256"])
                out.append({k: item[k] for k in ("stage", "content_sha256", "path") if k in item})
    return out


def parent_candidates(artifact_path: str | os.PathLike, recorded: str, by_name: bool = True) -> list[Path]:
    """The files a recorded parent may be, in order: the absolute path, the path relative to the
    artifact's directory (how `parent_entry` records it), relative to the working directory, or (by_name)
    its file name beside the artifact. Only files that exist, each once. BadInput for a path the
    file system cannot even look up (too long, a NUL byte)."""
    base = Path(artifact_path).parent
    rec = Path(recorded)
    paths = [rec] if rec.is_absolute() else [base / rec, rec] + ([base / rec.name] if by_name else [])
    found: list[Path] = []
    for candidate in paths:
        try:
            if candidate.is_file() and all(not candidate.samefile(f) for f in found):
                found.append(candidate)
        except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL byte
            why = getattr(exc, "strerror", None) or str(exc)
            raise BadInput(
                f"{artifact_path}: recorded parent path {_short(recorded, 60)} cannot be looked up: {why}",
                hint="the manifest's parents[].path is not a usable path",
            ) from None
    return found


def resolve_parent(artifact_path: str | os.PathLike, recorded: str, by_name: bool = True) -> Path | None:
    """The first of `parent_candidates`, or None when the parent is nowhere on disk."""
    return next(iter(parent_candidates(artifact_path, recorded, by_name)), None)


def check_manifest(manifest: Any, path: str | os.PathLike) -> dict:
    """Raise BadInput (one line) unless the manifest conforms to the schema."""
    errors = validate(manifest)
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise BadInput(
            f"{path}: invalid mncli manifest: {errors[0]}{more}",
            hint="the manifest schema is docs/manifest.schema.json; `mncli verify` lists every problem",
        )
    return manifest
