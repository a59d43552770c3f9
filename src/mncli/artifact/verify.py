"""`verify_artifact`: recompute the content hash and the manifest's seal, validate the manifest,
decode the stored weights, compare the sidecar, and check the parents still on disk and the lineage.
(Rebuilding the model and measuring the claims again is `mncli.stages.verify`, above this layer.)"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mncli.artifact.codec import decode_state
from mncli.artifact.hashing import hash_entries
from mncli.artifact.io import file_content_sha256, read_raw, read_raw_data, sidecar_path, tensors_from_raw
from mncli.artifact.manifest import SEAL_KEY, first_difference, parent_candidates, seal_status
from mncli.artifact.schema import validate
from mncli.errors import BadInput


def _sidecar(path: Path, manifest: Any) -> dict:
    """The sidecar against the file's manifest; "difference" names the first place they differ, and
    "sealed" says whether the sidecar's own seal holds (then it is the manifest as once written)."""
    side = sidecar_path(path)
    out = {"path": str(side), "status": "missing", "ok": True, "difference": None, "sealed": None}
    try:
        if not side.is_file():
            return out
        copy = json.loads(side.read_text(encoding="utf-8"))
        difference = first_difference(manifest, copy, ("file", "sidecar"))
    except (OSError, ValueError, RecursionError):
        return {**out, "status": "unreadable", "ok": False}
    sealed = isinstance(copy, dict) and SEAL_KEY in copy and seal_status(copy)["ok"]
    if difference is None:
        return {**out, "status": "ok", "sealed": sealed}
    return {
        **out,
        "status": f"differs at {difference}",
        "ok": False,
        "difference": difference,
        "sealed": sealed,
    }


def _seal_problem(seal: dict, sidecar: dict) -> str:
    """One line for a broken seal, naming what differs when the sidecar still holds the sealed original."""
    if seal["status"] == "unreadable":
        return "manifest seal: the manifest cannot be canonicalised to check its manifest_sha256"
    line = (
        "manifest edited after it was written: its manifest_sha256 does not match "
        f"(recorded {str(seal['recorded'])[:12]}, computed {str(seal['computed'])[:12]})"
    )
    if sidecar["difference"] and sidecar["sealed"]:
        line += f"; the sealed sidecar differs at {sidecar['difference']}"
    return line


def _check_file(out: dict, candidate: Path) -> dict:
    """`out` completed for one file on disk: its hash against the recorded one."""
    checked = {**out, "resolved": str(candidate)}
    try:
        checked["computed"] = file_content_sha256(candidate)
    except BadInput as exc:
        return {**checked, "status": f"unreadable: {exc.message}", "ok": False}
    ok = checked["computed"] == out["recorded"]
    return {**checked, "status": "ok" if ok else "mismatch", "ok": ok}


def _parent(path: Path, entry: dict) -> dict:
    """The parent as found on disk. Of several files the recorded path may name (beside the artifact,
    under the working directory), the one with the recorded hash counts: an unrelated file of the same
    name elsewhere is not a mismatch."""
    out = {
        "path": entry.get("path"),
        "resolved": None,
        "recorded": entry.get("content_sha256"),
        "computed": None,
    }
    found = parent_candidates(path, str(entry.get("path", "")))
    if not found:
        return {**out, "status": "missing", "ok": True}
    first = None
    for candidate in found:  # stop hashing at the first match
        checked = _check_file(out, candidate)
        if checked["ok"]:
            return checked
        first = first or checked
    return first


def _lineage(manifest: dict, parents: list[dict]) -> list[str]:
    """Every parent must be in the lineage, and so must every ancestor a parent on disk records."""
    known = {a.get("content_sha256") for a in manifest.get("lineage") or [] if isinstance(a, dict)}
    errors = [f"parent {p['path']} is not in the lineage" for p in parents if p["recorded"] not in known]
    for p in parents:
        if p["status"] != "ok":
            continue
        parent_manifest, _, _ = read_raw(p["resolved"])
        for a in parent_manifest.get("lineage") or []:
            if a.get("content_sha256") not in known:
                errors.append(
                    f"ancestor {a.get('stage')} {a.get('content_sha256', '')[:12]} of {p['path']} is missing"
                )
    return errors


def verify_artifact(path: str | os.PathLike) -> dict:
    """A report of every check; report["ok"] is False when any of them failed. Missing parents, a
    missing sidecar and a manifest without a seal (written before manifests were sealed) are
    reported, not failures (artifacts get copied around alone). BadInput when the file is not a
    readable artifact at all."""
    path = Path(path)
    manifest, raw = read_raw_data(path)  # header and data from one open file: no race with a writer
    computed = hash_entries((n, d, s, memoryview(b)) for n, d, s, b in raw)
    schema_errors = validate(manifest)
    good = isinstance(manifest, dict)
    recorded = manifest.get("content_sha256") if good else None
    try:
        specs = ((manifest.get("compression") or {}).get("layers") or {}) if good else {}
        decode_state(tensors_from_raw(raw, path), specs if isinstance(specs, dict) else {})
        decoded: dict = {"ok": True, "count": len(raw), "error": None}
    except (BadInput, AttributeError, TypeError) as exc:
        first = (getattr(exc, "message", None) or str(exc)).strip().splitlines() or [type(exc).__name__]
        decoded = {"ok": False, "count": len(raw), "error": first[0]}
    parents = [
        _parent(path, p) for p in (manifest.get("parents") or [] if good else []) if isinstance(p, dict)
    ]
    lineage_errors = _lineage(manifest, parents) if good and not schema_errors else []
    sidecar = _sidecar(path, manifest)
    seal = seal_status(manifest)
    report = {
        "path": str(path),
        "stage": manifest.get("stage") if good else None,
        "content_sha256": {"ok": computed == recorded, "recorded": recorded, "computed": computed},
        "manifest_sha256": {**seal, "problem": None if seal["ok"] else _seal_problem(seal, sidecar)},
        "schema": {"ok": not schema_errors, "errors": schema_errors},
        "tensors": decoded,
        "sidecar": sidecar,
        "parents": parents,
        "lineage": {"ok": not lineage_errors, "errors": lineage_errors},
    }
    problems = []
    if not report["content_sha256"]["ok"]:
        problems.append("content hash mismatch: the tensor data differs from what was written")
    if not seal["ok"]:
        problems.append(report["manifest_sha256"]["problem"])
    problems += [f"schema: {e}" for e in schema_errors]
    if not decoded["ok"]:
        problems.append(f"tensors: {decoded['error']}")
    if not report["sidecar"]["ok"]:
        problems.append(f"sidecar {report['sidecar']['path']} {report['sidecar']['status']}")
    problems += [f"parent {p['path']}: {p['status']}" for p in parents if not p["ok"]]
    problems += [f"lineage: {e}" for e in lineage_errors]
    report["ok"] = not problems
    report["problems"] = problems
    return report
