"""Pieces of a compound-scaling grid: the scaled architecture and cost of each point, budgets, point
files (a trained point's holds its weights), the identity a point file shares with its siblings, and
the choice among trained points."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mncli.scaling.compound import FIXED_RESOLUTION, GridPoint, scale_arch


def point_path(out: Path, index: int) -> Path:
    name = out.name[: -len(".safetensors")] if out.name.endswith(".safetensors") else out.name
    return out.with_name(f"{name}.point{index}.safetensors")


def resolution_fixed(arch: dict, dataset: str | None) -> bool:
    from mncli.models import default_dataset

    name = dataset or default_dataset(arch["name"], arch.get("args", {})) or ""
    return name.split(":")[0] in FIXED_RESOLUTION


def over_budget(score: dict, budget_ops: float | None, budget_params: float | None) -> str | None:
    if budget_ops is not None and score["ops"] > budget_ops:
        return f"ops {score['ops']:,.0f} > budget {budget_ops:,.0f}"
    if budget_params is not None and score["params"] > budget_params:
        return f"params {score['params']:,.0f} > budget {budget_params:,.0f}"
    return None


def scaled_point(arch: dict, point: GridPoint, phi: float, fixed: bool, dataset: str | None) -> dict:
    from mncli.bundle import arch_score

    depth, width, resolution = point.multipliers(phi)
    scaled = scale_arch(arch, depth, width, 1.0 if fixed else resolution)
    record = point.to_dict(phi)
    record.update({"arch": scaled, "resolution_fixed": fixed, "score": arch_score(scaled, dataset)})
    return record


def grid_id(source_arch: dict, phi: float, points: list[tuple], settings: dict) -> str:
    """What a point file must share with its siblings to be collected with them."""
    key = {"arch": source_arch, "phi": phi, "grid": [list(p) for p in points], **settings}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def choose(points: list[dict]) -> dict | None:
    """The best trained point: highest validation accuracy, then lowest score, then lowest index."""
    trained = [p for p in points if p.get("status") == "trained" and p.get("val_acc") is not None]
    if not trained:
        return None
    return min(trained, key=lambda p: (-p["val_acc"], p["score"]["score"], p["point"]))


def trained_point(path: Path, gid: str) -> tuple[Path, dict] | None:
    """(path, manifest) when `path` is a point file of grid `gid` holding its trained weights, else None."""
    from mncli.artifact import read_manifest
    from mncli.artifact.io import read_header

    if not path.is_file():
        return None
    manifest = read_manifest(path)
    record = manifest.get("scale_point")
    if not isinstance(record, dict) or record.get("grid_id") != gid or record.get("status") != "trained":
        return None
    header = read_header(path)[0]
    return (path, manifest) if any(key != "__metadata__" for key in header) else None


def present_points(out: Path, source_arch: dict, wanted, point_command: str) -> tuple[list[dict], dict]:
    """The point files beside `out` that belong to one grid of this architecture. `wanted()` names
    the grid id the caller's options give (None when they do not say) to pick among several grids;
    `point_command` is how a point of this source is run (for the hint when there is none)."""
    from mncli.artifact import read_manifest
    from mncli.errors import BadInput

    name = out.name[: -len(".safetensors")] if out.name.endswith(".safetensors") else out.name
    found: dict[str, list[dict]] = {}
    for path in sorted(out.parent.glob(f"{name}.point*.safetensors")):
        record = read_manifest(path).get("scale_point")
        if isinstance(record, dict) and record.get("source_arch") == source_arch:
            found.setdefault(record["grid_id"], []).append(record)
    if not found:
        raise BadInput(
            f"no point files of this architecture beside {out} ({name}.pointK.safetensors)",
            hint=f"run the points first: {point_command} --point K -d DATASET --phi P -o {out}",
        )
    if len(found) > 1:
        key = wanted()
        if key is None:
            raise BadInput(
                f"point files of {len(found)} different grids beside {out}",
                hint="give --phi, --dataset and the grid's options to pick one, or delete the stale files",
            )
        if key not in found:
            raise BadInput(f"none of the point files beside {out} match these grid options")
        found = {key: found[key]}
    records = sorted(next(iter(found.values())), key=lambda r: r["point"])
    return records, records[0]
