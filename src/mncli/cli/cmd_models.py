"""`mncli models`: the registered architectures, their parameter counts and native inputs."""

from __future__ import annotations

from typing import Annotated

import typer

from mncli.cli import output
from mncli.cli.options import Json
from mncli.text import fmt_num

HELP = "\n\n".join(
    [
        "List the registered model architectures (parameters counted at default arguments).",
        "Names are patterns: wrn-D-K, resnetN (N = 6n+2), mobilenetv2-W, mobilenetv2-cifar, "
        "efficientnet-b0..b7; every model takes num_classes, in_channels and input_size through --arch-opt.",
        "Examples:",
        "  mncli models",
        "  mncli models --family efficientnet --json",
    ]
)

Family = Annotated[
    str | None,
    typer.Option("--family", metavar="FAMILY", help="Only this family (e.g. wrn, efficientnet, test-cnn)."),
]


def register(app: typer.Typer) -> None:
    @app.command("models", help=HELP)
    def models(
        family: Family = None,
        as_json: Json = False,
    ) -> None:
        from rich.table import Table

        from mncli.errors import BadInput
        from mncli.models import list_models

        rows = list_models()
        if family is not None:
            known = sorted({r["family"] for r in rows})
            rows = [r for r in rows if r["family"] == family]
            if not rows:
                raise BadInput(f"unknown model family {family!r}", hint="known: " + ", ".join(known))
        # Narrow terminals drop the wordy columns rather than wrapping every row.
        width = output.stdout.width
        columns = ["name", "params", "input", "classes", "dataset"]
        if width >= 90:
            columns.insert(1, "family")
        if width >= 130:
            columns.append("description")
        table = Table(title="mncli models")
        for column in columns:
            right = column in ("params", "input", "classes")
            table.add_column(column, justify="right" if right else "left", no_wrap=column != "description")
        for row in rows:
            cells = {
                **row,
                "params": fmt_num(row["params"]),
                "input": "x".join(str(s) for s in row["input_shape"]),
                "classes": str(row["num_classes"]),
                "dataset": row["default_dataset"] or "-",
            }
            table.add_row(*(str(cells[c]) for c in columns))
        output.emit({"models": rows}, as_json=as_json, table=table)
