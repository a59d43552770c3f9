"""`mncli report`: one table for a chain of artifacts (accuracy, score, size at every stage)."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from mncli.cli import output
from mncli.cli.options import OUTPUT, Json
from mncli.log import log
from mncli.text import fmt_num, fmt_pct

HELP = "\n\n".join(
    [
        "Summarise a compression chain: accuracy, MicroNet score and file size of every stage.",
        "Give the artifacts in order, or only the last one with --chain to follow its parents.",
        "Examples:",
        "  mncli report fp.safetensors p.safetensors t.safetensors q.safetensors",
        "  mncli report q.safetensors --chain --markdown results.md",
    ]
)


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


class Kind(enum.StrEnum):
    """How a report column is printed."""

    TEXT = "str"
    PCT = "pct"
    INT = "int"
    SCORE = "score"
    TIMES = "x"


def _fmt(value, kind: Kind) -> str:
    if value is None:
        return "-"
    if kind is Kind.PCT:
        return fmt_pct(value)
    if kind is Kind.INT:
        return f"{value:,.0f}"
    if kind is Kind.SCORE:
        return fmt_num(float(value))
    if kind is Kind.TIMES:
        return f"{value:.1f}x"
    return str(value)


COLUMNS = [
    ("stage", "stage", Kind.TEXT),
    ("val top-1", "val_top1", Kind.PCT),
    ("test top-1", "test_top1", Kind.PCT),
    ("params", "params", Kind.INT),
    ("ops", "ops", Kind.INT),
    ("score", "score", Kind.SCORE),
    ("vs first", "score_reduction", Kind.TIMES),
    ("file bytes", "file_bytes", Kind.INT),
]


def markdown(rows: list[dict]) -> str:
    head = "| artifact | " + " | ".join(c[0] for c in COLUMNS) + " |"
    rule = "|---|" + "---|" * len(COLUMNS)
    body = [
        f"| {Path(r['artifact']).name} | " + " | ".join(_fmt(r[key], kind) for _, key, kind in COLUMNS) + " |"
        for r in rows
    ]
    return "\n".join([head, rule, *body]) + "\n"


Artifacts = Annotated[
    list[Path], typer.Argument(metavar="INPUT...", help="Artifacts, oldest first.", show_default=False)
]
Markdown = Annotated[
    Path | None,
    typer.Option(
        "--markdown", metavar="FILE", rich_help_panel=OUTPUT, help="Also write the table as Markdown to FILE."
    ),
]


def register(app: typer.Typer) -> None:
    @app.command("report", help=HELP)
    def report(
        artifacts: Artifacts,
        chain: Annotated[bool, typer.Option("--chain", help="Follow the last artifact's parents.")] = False,
        markdown_out: Markdown = None,
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
            table.add_column(title, justify="left" if kind is Kind.TEXT else "right", no_wrap=True)
        for r in rows:
            table.add_row(Path(r["artifact"]).name, *(_fmt(r[key], kind) for _, key, kind in COLUMNS))
        output.emit({"rows": rows}, as_json=as_json, table=table)
