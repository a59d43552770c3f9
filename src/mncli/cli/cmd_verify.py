"""`mncli verify`: is an artifact intact and consistent with its parents?"""

from __future__ import annotations

import typer

from mncli.cli import output
from mncli.cli.options import InputArtifact, Json

HELP = "\n\n".join(
    [
        "Check that an artifact is intact and consistent with its parents.",
        "Recomputes the content hash, validates the manifest against the schema, decodes the stored "
        "weights, compares the sidecar NAME.manifest.json, and checks the lineage and every parent still "
        "on disk (its content hash must match the recorded one); parents that are gone are listed but "
        "do not fail the check.",
        "Exit code 0 when everything holds, 1 when a check failed, 2 when the file is not an artifact.",
        "Examples:",
        "  mncli verify q.safetensors",
        "  mncli verify q.safetensors --json | jq .problems",
    ]
)


def _mark(ok: bool) -> str:
    return "[green]ok[/green]" if ok else "[red]FAILED[/red]"


def render(report: dict):
    from rich.table import Table

    table = Table(title=f"mncli verify {report['path']}")
    for col in ("check", "result", "detail"):
        table.add_column(col)
    h = report["content_sha256"]
    table.add_row(
        "content hash",
        _mark(h["ok"]),
        h["computed"] if h["ok"] else f"recorded {h['recorded']}, computed {h['computed']}",
    )
    s = report["schema"]
    table.add_row("manifest schema", _mark(s["ok"]), "; ".join(s["errors"][:3]))
    t = report["tensors"]
    table.add_row("stored tensors", _mark(t["ok"]), t["error"] or f"{t['count']} stored tensors, all decode")
    c = report["sidecar"]
    table.add_row("sidecar", _mark(c["ok"]), f"{c['path']}: {c['status']}")
    for p in report["parents"]:
        result = "[yellow]missing[/yellow]" if p["status"] == "missing" else _mark(p["ok"])
        table.add_row("parent", result, f"{p['path']}: {p['status']}")
    if not report["parents"]:
        table.add_row("parents", "-", "none recorded")
    lin = report["lineage"]
    table.add_row("lineage", _mark(lin["ok"]), "; ".join(lin["errors"][:3]))
    return table


def register(app: typer.Typer) -> None:
    @app.command("verify", help=HELP)
    def verify(artifact: InputArtifact, as_json: Json = False) -> None:
        from mncli.artifact import verify_artifact
        from mncli.errors import RuntimeFailure

        report = verify_artifact(artifact)
        output.emit(report, as_json=as_json, table=render(report))
        if not report["ok"]:
            problems = report["problems"]
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise RuntimeFailure(f"{artifact} failed verification: {problems[0]}{more}")
