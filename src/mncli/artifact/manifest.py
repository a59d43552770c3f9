"""The manifest: building one, its canonical JSON form, validation, parents and lineage.

The manifest lives inside the artifact (safetensors `__metadata__["mncli"]`, canonical JSON: sorted
keys, compact separators, ASCII, no NaN) and, pretty-printed, in the sidecar NAME.manifest.json. It
holds no timestamps or host names, so a deterministic stage writes identical bytes.
"""

from __future__ import annotations

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
from mncli.errors import BadInput
from mncli.version import __version__

FORMAT = "mncli/1"


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
    """A complete manifest (save_artifact adds `content_sha256`). `parents` come from
    `parent_entry`; `lineage` defaults to the parents' lineages followed by the parents."""
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
    its file name beside the artifact. Only files that exist, each once."""
    base = Path(artifact_path).parent
    rec = Path(recorded)
    paths = [rec] if rec.is_absolute() else [base / rec, rec] + ([base / rec.name] if by_name else [])
    found: list[Path] = []
    for candidate in paths:
        if candidate.is_file() and all(not candidate.samefile(f) for f in found):
            found.append(candidate)
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
