"""`mncli report`: one table for a chain, a grid or several runs (accuracy, score, size of each
artifact), as Markdown or JSON too, and with --html one self-contained page with plots."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mncli.cli import output
from mncli.cli.options import OUTPUT, Json

HELP = "\n\n".join(
    [
        "Summarise a compression chain, a grid or several runs: accuracy, MicroNet score and file size of "
        "every artifact.",
        "Give the artifacts in order, a folder (every mncli artifact in it: a grid's points and its "
        "collected output), or only the last artifact with --chain to follow its parents.",
        "Params, ops and score are measured from each artifact, with '(claimed X)' where its manifest "
        "says otherwise; accuracies are the manifests' own numbers, marked * as recorded (`mncli "
        "verify ART --reproduce` measures them), as is a score that cannot be measured. The manifest "
        "column says whether each manifest is as written (sealed), from before seals (not sealed), or "
        "EDITED since. --json gives the same per row: sources (measured or recorded), recorded, "
        "claims_differ.",
        "--html writes one HTML file that needs nothing else (plots inline, no network): each "
        "artifact's lineage as a row of stages, accuracy against score with the Pareto front and the "
        "task's target, parameters, operations, bits and sparsity per layer before and after, the "
        "training curves the manifests hold, and the score's conventions and claims. It needs "
        "matplotlib (pip install 'mncli\\[plot]').",
        "Examples:",
        "  mncli report fp.safetensors p.safetensors t.safetensors q.safetensors",
        "  mncli report q.safetensors --chain --markdown results.md",
        "  mncli report q.safetensors --chain --html report.html",
        "  mncli report runs/ec2t-grid/ --html grid.html",
        "  mncli report scaled.point*.safetensors --json",
    ]
)

Artifacts = Annotated[
    list[Path],
    typer.Argument(
        metavar="INPUT...", help="Artifacts, oldest first, or folders of artifacts.", show_default=False
    ),
]
Markdown = Annotated[
    Path | None,
    typer.Option(
        "--markdown",
        metavar="FILE",
        rich_help_panel=OUTPUT,
        help="Also write the table as Markdown to FILE, e.g. --markdown results.md.",
    ),
]
Html = Annotated[
    Path | None,
    typer.Option(
        "--html",
        metavar="FILE",
        rich_help_panel=OUTPUT,
        help="Also write a self-contained HTML page with plots to FILE, e.g. --html report.html.",
    ),
]


def register(app: typer.Typer) -> None:
    @app.command("report", help=HELP)
    def report(
        artifacts: Artifacts,
        chain: Annotated[bool, typer.Option("--chain", help="Follow the last artifact's parents.")] = False,
        markdown_out: Markdown = None,
        html_out: Html = None,
        as_json: Json = False,
    ) -> None:
        from rich.table import Table

        from mncli.stages.report import COLUMNS, NOTE, Kind, ReportConfig, cell, run

        result = run(ReportConfig(list(artifacts), chain=chain, markdown=markdown_out, html=html_out))
        table = Table(title="mncli report")
        table.add_column("artifact", overflow="ellipsis", max_width=28)
        for title, _, kind in COLUMNS:
            table.add_column(title, justify="left" if kind is Kind.TEXT else "right", no_wrap=True)
        for r in result["rows"]:
            table.add_row(Path(r["artifact"]).name, *(cell(r, key, kind) for _, key, kind in COLUMNS))
        table.caption = NOTE
        output.emit(result, as_json=as_json, table=table)
