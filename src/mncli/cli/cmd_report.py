"""`mncli report`: one table for a chain of artifacts (accuracy, score, size at every stage)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mncli.cli import output
from mncli.cli.options import Json
from mncli.log import log

HELP = """Summarise a compression chain: accuracy, MicroNet score and file size of every stage.

Give the artifacts in order, or only the last one with --chain to follow its parents.

Example:

  mncli report fp.safetensors pruned.safetensors tern.safetensors q.safetensors

  mncli report q.safetensors --chain --markdown results.md
"""


def _chain(path: Path) -> list[Path]:
    """The artifact and its ancestors that still exist on disk, oldest first."""
    from mncli.artifact import read_manifest
    from mncli.artifact.manifest import resolve_parent

    chain = [path]
    seen = {path.resolve()}
    while True:
        parents = read_manifest(chain[0]).get("parents") or []
        parent = resolve_parent(chain[0], parents[0]["path"]) if parents else None
        if parent is None or parent.resolve() in seen:
            break
        seen.add(parent.resolve())
        chain.insert(0, parent)
    return chain


def _top1(metrics: dict, split: str) -> float | None:
    value = metrics.get(f"{split}_acc")
    return float(value) if value is not None else None


def build_rows(paths: list[Path]) -> list[dict]:
    from mncli.artifact import read_manifest

    rows = []
    for path in paths:
        manifest = read_manifest(path)
        metrics = manifest.get("metrics") or {}
        score = metrics.get("score") or {}
        rows.append(
            {
                "artifact": str(path),
                "stage": manifest.get("stage"),
                "arch": (manifest.get("arch") or {}).get("name"),
                "val_top1": _top1(metrics, "val"),
                "test_top1": _top1(metrics, "test"),
                "params": score.get("params"),
                "ops": score.get("ops"),
                "score": score.get("score"),
                "file_bytes": path.stat().st_size,
            }
        )
    first = next((r["score"] for r in rows if r["score"]), None)
    for row in rows:
        row["score_reduction"] = first / row["score"] if first and row["score"] else None
    return rows


def _fmt(value, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "pct":
        return f"{100 * value:.2f} %"
    if kind == "int":
        return f"{value:,.0f}"
    if kind == "score":
        return f"{value:.4g}"
    if kind == "x":
        return f"{value:.1f}x"
    return str(value)


COLUMNS = [
    ("stage", "stage", "str"),
    ("val top-1", "val_top1", "pct"),
    ("test top-1", "test_top1", "pct"),
    ("params", "params", "int"),
    ("ops", "ops", "int"),
    ("score", "score", "score"),
    ("vs first", "score_reduction", "x"),
    ("file bytes", "file_bytes", "int"),
]


def markdown(rows: list[dict]) -> str:
    head = "| artifact | " + " | ".join(c[0] for c in COLUMNS) + " |"
    rule = "|---|" + "---|" * len(COLUMNS)
    body = [
        f"| {Path(r['artifact']).name} | " + " | ".join(_fmt(r[key], kind) for _, key, kind in COLUMNS) + " |"
        for r in rows
    ]
    return "\n".join([head, rule, *body]) + "\n"


def register(app: typer.Typer) -> None:
    @app.command("report", help=HELP)
    def report(
        artifacts: Annotated[list[Path], typer.Argument(help="Artifacts, oldest first.", show_default=False)],
        chain: Annotated[bool, typer.Option("--chain", help="Follow the last artifact's parents.")] = False,
        markdown_out: Annotated[
            Path | None, typer.Option("--markdown", help="Also write the table as Markdown to this file.")
        ] = None,
        as_json: Json = False,
    ) -> None:
        from rich.table import Table

        from mncli.artifact import read_manifest

        for path in artifacts:
            read_manifest(path)  # a clear BadInput for anything that is not an artifact
        paths = _chain(artifacts[-1]) if chain else list(artifacts)
        rows = build_rows(paths)
        if markdown_out is not None:
            markdown_out.write_text(markdown(rows))
            log(f"wrote {markdown_out}")
        table = Table(title="mncli report")
        table.add_column("artifact", overflow="ellipsis", max_width=28)
        for title, _, kind in COLUMNS:
            table.add_column(title, justify="left" if kind == "str" else "right", no_wrap=True)
        for r in rows:
            table.add_row(Path(r["artifact"]).name, *(_fmt(r[key], kind) for _, key, kind in COLUMNS))
        output.emit({"rows": rows}, as_json=as_json, table=table)
