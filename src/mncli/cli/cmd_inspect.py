"""`mncli inspect`: what an artifact holds, layer by layer, measured from its decoded tensors; or what a
foreign checkpoint holds, key by key, and the published layouts its keys match."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer

from mncli.cli import output
from mncli.cli.options import ArchName, ArchOpt, Json
from mncli.log import log
from mncli.text import clipped, fmt_num, fmt_pct

HELP = "\n\n".join(
    [
        "Show what an artifact holds: architecture, lineage, metrics and a per-layer table.",
        "Given a PyTorch checkpoint instead (.pt/.pth/..., or a .safetensors file mncli did not write): "
        "its keys, shapes and dtypes, the published layouts the keys match and the architecture each "
        "converts to; with --arch, the keys that are missing, unexpected or of another shape for it. "
        "Nothing the file names is run.",
        "Per layer: shape, storage format, sparsity (measured from the decoded weights), how the weight "
        "is stored (dense, or sparse: mask + non-zeros, whichever the score charges less), weight and "
        "activation bits, and bytes on disk. An architecture-only artifact shows its architecture and "
        "the layer shapes the model zoo builds from it.",
        "Examples:",
        "  mncli inspect pruned.safetensors",
        "  mncli inspect q.safetensors --json | jq '.layers[] | {name, sparsity}'",
        "  mncli inspect efficientnet_b1.pth",
        "  mncli inspect resnet20.th --arch resnet20",
    ]
)


def _format(spec: dict, dtype: str) -> tuple[str, int | float]:
    """(storage format label, weight bits) of a layer; int weights may have fractional bits (2.5)."""
    w = spec.get("weight") or {}
    fmt, bits = w.get("format", "float"), w.get("bits", 32)
    if fmt == "ternary":
        return "ternary", 2
    if fmt == "int":
        bits = int(bits) if float(bits).is_integer() else float(bits)
        levels = "" if isinstance(bits, int) else f" ({w.get('levels', '?')} levels)"
        return f"int{bits}{levels}" + (" per-channel" if w.get("per_channel") else ""), bits
    bits = int(bits)
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


def _layers(state: dict, specs: dict, stored: dict[str, int], sparse: set[str]) -> list[dict]:
    """Rows per weight-owning module; `sparse` names the weights stored as mask + non-zeros."""
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
            "storage": "sparse" if f"{m}.weight" in sparse else "dense",
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
        sparse = {k.removesuffix(f"{codec.SEP}mask") for k in tensors if k.endswith(f"{codec.SEP}mask")}
        layers = _layers(codec.decode_state(tensors, specs), specs, stored, sparse)
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
    return clipped(json.dumps(value, sort_keys=True, separators=(", ", "="), default=str), limit)


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
    for col in ("layer", "shape", "format", "sparsity", "stored", "w bits", "a bits", "bytes"):
        layers.add_column(col, justify="left" if col in ("layer", "shape", "format", "stored") else "right")
    for r in info["layers"]:
        sparsity = fmt_pct(r.get("sparsity"))
        layers.add_row(
            r["name"],
            "x".join(map(str, r["shape"])) if r["shape"] is not None else "-",
            r["format"],
            sparsity,
            r.get("storage", "-"),
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


def render_checkpoint(info: dict):
    from rich.console import Group
    from rich.table import Table

    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("checkpoint", f"{info['path']} ({fmt_num(info['file_bytes'])} bytes)")
    summary.add_row("tensors", f"{info['tensors']} ({fmt_num(info['values'])} values)")
    for key, label in (("stripped_prefixes", "stripped"), ("replaced_objects", "not loaded")):
        if info.get(key):
            summary.add_row(label, ", ".join(info[key]))
    if not info["layouts"]:
        summary.add_row("layout", "no known layout: the keys must fit --arch as they are")
    for match in info["layouts"]:
        target = match.get("arch")
        detail = f"{target} {_compact(match.get('args', {}))}" if target else match.get("cannot_convert", "")
        summary.add_row("layout", f"{match['layout']} -> {detail}")
    parts: list = [summary]
    fit = info.get("fit")
    if fit is not None:
        missing, unexpected, other = (len(fit[k]) for k in ("missing", "unexpected", "mismatched"))
        counts = f"{missing} missing, {unexpected} unexpected, {other} of another shape"
        summary.add_row("fit", f"{fit['arch']['name']}: {counts}")
    keys = Table(title="keys")
    for col in ("key", "shape", "dtype"):
        keys.add_column(col)
    for row in info["keys"]:
        keys.add_row(row["key"], "x".join(map(str, row["shape"])) or "scalar", row["dtype"])
    parts.append(keys)
    if fit is not None and any(fit[k] for k in ("missing", "unexpected", "mismatched")):
        diff = Table(title=f"against {fit['arch']['name']}")
        diff.add_column("key")
        diff.add_column("problem")
        for key in fit["missing"]:
            diff.add_row(key, "missing from the checkpoint")
        for key in fit["unexpected"]:
            diff.add_row(key, "not in the model")
        for item in fit["mismatched"]:
            diff.add_row(item["key"], f"checkpoint {item['checkpoint']}, model {item['model']}")
        parts.append(diff)
    return Group(*parts)


def register(app: typer.Typer) -> None:
    @app.command("inspect", help=HELP)
    def inspect(
        artifact: Annotated[
            Path,
            typer.Argument(
                metavar="INPUT", help="Artifact (.safetensors) or PyTorch checkpoint.", show_default=False
            ),
        ],
        arch: ArchName = None,
        arch_opt: ArchOpt = None,
        as_json: Json = False,
    ) -> None:
        from mncli.errors import BadInput
        from mncli.models import parse_arch_opts
        from mncli.stages.import_checkpoint import describe_checkpoint, is_checkpoint

        if artifact.is_file() and is_checkpoint(artifact):
            info = describe_checkpoint(artifact, arch, parse_arch_opts(arch_opt))
            output.emit(info, as_json=as_json, table=render_checkpoint(info))
            return
        if arch or arch_opt:
            raise BadInput("--arch is for inspecting a checkpoint, not an mncli artifact", hint="drop --arch")
        info = describe(artifact)
        output.emit(info, as_json=as_json, table=render(info))
