"""`mncli inspect`: what an artifact holds, layer by layer, measured from its decoded tensors."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import typer

from mncli.cli import output
from mncli.cli.options import InputArtifact, Json
from mncli.log import log
from mncli.text import fmt_num, fmt_pct

HELP = "\n\n".join(
    [
        "Show what an artifact holds: architecture, lineage, metrics and a per-layer table.",
        "Per layer: shape, storage format, sparsity (measured from the decoded weights), weight and "
        "activation bits, and bytes on disk. An architecture-only artifact shows its architecture and "
        "the layer shapes the model zoo builds from it.",
        "Examples:",
        "  mncli inspect pruned.safetensors",
        "  mncli inspect q.safetensors --json | jq '.layers[] | {name, sparsity}'",
    ]
)


def _format(spec: dict, dtype: str) -> tuple[str, int]:
    """(storage format label, weight bits) of a layer."""
    w = spec.get("weight") or {}
    fmt, bits = w.get("format", "float"), int(w.get("bits", 32))
    if fmt == "ternary":
        return "ternary", 2
    if fmt == "int":
        return f"int{bits}" + (" per-channel" if w.get("per_channel") else ""), bits
    if not w:
        return dtype, {"float64": 64, "float16": 16, "bfloat16": 16}.get(dtype, 32)
    return f"float{bits}", bits


def _natural(name: str) -> list:
    """Sort key putting layer2 before layer10."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _owner(base: str, modules: list[str]) -> str:
    """The layer a stored tensor belongs to: the longest weight-owning module prefixing it."""
    match = [m for m in modules if base == m or base.startswith(m + ".")]
    return max(match, key=len) if match else base.rsplit(".", 1)[0]


def _layers(state: dict, specs: dict, stored: dict[str, int]) -> list[dict]:
    modules = sorted(k.removesuffix(".weight") for k, v in state.items() if k.endswith(".weight") and v.dim())
    rows: dict[str, dict[str, Any]] = {}
    for m in modules:
        w = state[f"{m}.weight"]
        spec = specs.get(m) or {}
        fmt, bits = _format(spec, str(w.dtype).removeprefix("torch."))
        nnz = int((w != 0).sum())
        rows[m] = {
            "name": m,
            "shape": list(w.shape),
            "format": fmt,
            "numel": w.numel(),
            "nonzero": nnz,
            "sparsity": 1.0 - nnz / w.numel() if w.numel() else 0.0,
            "weight_bits": bits,
            "act_bits": int((spec.get("act") or {}).get("bits", 32)),
            "stored_bytes": 0,
        }
    for base, nbytes in stored.items():
        owner = _owner(base, modules)
        row = rows.setdefault(owner, {"name": owner, "shape": None, "format": "-", "stored_bytes": 0})
        row["stored_bytes"] += nbytes
    return sorted(rows.values(), key=lambda r: _natural(r["name"]))


def _arch_only_layers(arch: dict) -> list[dict]:
    """Layer shapes of a model built from the architecture (no stored bytes)."""
    from mncli.errors import MncliError
    from mncli.models import build_model

    try:
        model = build_model(arch)
    except MncliError as exc:
        log(f"cannot build {arch.get('name')}: {exc.message}")
        return []
    return [
        {"name": k.removesuffix(".weight"), "shape": list(v.shape), "format": "not stored", "stored_bytes": 0}
        for k, v in model.state_dict().items()
        if k.endswith(".weight") and v.dim() > 1
    ]


def describe(path: Path) -> dict:
    """Everything `inspect` shows, as one JSON-able dict."""
    from mncli.artifact import codec, file_report, load_artifact

    tensors, manifest = load_artifact(path)
    report = file_report(path)
    specs = (manifest.get("compression") or {}).get("layers") or {}
    stored = {base: g["bytes"] + g["layout_bytes"] for base, g in report["groups"].items()}
    if tensors:
        layers = _layers(codec.decode_state(tensors, specs), specs, stored)
    else:
        layers = _arch_only_layers(manifest["arch"])
    numel = sum(r.get("numel", 0) for r in layers)
    nonzero = sum(r.get("nonzero", 0) for r in layers)
    keys = ("format", "stage", "content_sha256", "arch", "parents", "lineage", "params", "seed", "data")
    return {
        "path": str(path),
        "file_bytes": report["file_bytes"],
        "header_bytes": report["header_bytes"],
        **{k: manifest.get(k) for k in keys},
        "metrics": manifest.get("metrics"),
        "command": manifest.get("command"),
        "env": manifest.get("env"),
        "architecture_only": not tensors,
        "tensors": len(tensors),
        "layers": layers,
        "totals": {
            "weights": numel,
            "nonzero_weights": nonzero,
            "sparsity": 1.0 - nonzero / numel if numel else 0.0,
            "stored_bytes": sum(stored.values()),
        },
    }


def _compact(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, sort_keys=True, separators=(", ", "="), default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def render(info: dict):
    from rich.console import Group
    from rich.table import Table

    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    arch = info["arch"] or {}
    chain = [f"{a.get('stage')} {str(a.get('content_sha256'))[:12]}" for a in info["lineage"] or []]
    for key, value in [
        ("artifact", f"{info['path']} ({fmt_num(info['file_bytes'])} bytes, {info['tensors']} tensors)"),
        ("stage", info["stage"]),
        ("arch", f"{arch.get('name')} {_compact(arch.get('args', {}))}"),
        ("content", info["content_sha256"]),
        ("lineage", " -> ".join([*chain, f"[bold]{info['stage']}[/bold] (this)"])),
        ("params", _compact(info["params"])),
        ("metrics", _compact(info["metrics"])),
        ("data", _compact(info["data"])),
    ]:
        summary.add_row(key, str(value))
    layers = Table(title="architecture only: layer shapes" if info["architecture_only"] else "layers")
    for col in ("layer", "shape", "format", "sparsity", "w bits", "a bits", "bytes"):
        layers.add_column(col, justify="left" if col in ("layer", "shape", "format") else "right")
    for r in info["layers"]:
        sparsity = fmt_pct(r.get("sparsity"))
        layers.add_row(
            r["name"],
            "x".join(map(str, r["shape"])) if r["shape"] is not None else "-",
            r["format"],
            sparsity,
            str(r.get("weight_bits", "-")),
            str(r.get("act_bits", "-")),
            fmt_num(r["stored_bytes"]) if not info["architecture_only"] else "-",
        )
    t = info["totals"]
    foot = (
        f"{fmt_num(t['weights'])} weights, {fmt_num(t['nonzero_weights'])} non-zero "
        f"({fmt_pct(t['sparsity'])} sparse), {fmt_num(t['stored_bytes'])} bytes of tensors"
    )
    return Group(summary, layers, foot) if not info["architecture_only"] else Group(summary, layers)


def register(app: typer.Typer) -> None:
    @app.command("inspect", help=HELP)
    def inspect(artifact: InputArtifact, as_json: Json = False) -> None:
        info = describe(artifact)
        output.emit(info, as_json=as_json, table=render(info))
