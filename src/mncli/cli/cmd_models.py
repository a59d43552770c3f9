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
        "Beyond the zoo, --arch takes torchvision:NAME (every torchvision classification model), "
        "timm:NAME (with timm installed), path/to/file.py:builder or package.module:builder (your own "
        "code; the builder's keyword arguments come from --arch-opt), and the families installed "
        "packages declare in the `mncli.models` entry-point group (listed here). No weights are "
        "downloaded: they come in through `mncli import`.",
        "Examples:",
        "  mncli models",
        "  mncli models --family efficientnet --json",
        "  mncli models --family torchvision",
    ]
)

Family = Annotated[
    str | None,
    typer.Option(
        "--family",
        metavar="FAMILY",
        help="Only this family (e.g. wrn, efficientnet; torchvision or timm lists theirs).",
    ),
]


def register(app: typer.Typer) -> None:
    @app.command("models", help=HELP)
    def models(
        family: Family = None,
        as_json: Json = False,
    ) -> None:
        from rich.console import Group
        from rich.table import Table

        from mncli.errors import BadInput
        from mncli.models import list_models

        if family in ("torchvision", "timm"):
            from mncli.models.external import package_models

            rows = package_models(family)
        else:
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
                "params": fmt_num(row["params"]) if row["params"] is not None else "-",
                "input": "x".join(str(s) for s in row["input_shape"] or ["-"]),
                "classes": str(row["num_classes"]),
                "dataset": row["default_dataset"] or "-",
            }
            table.add_row(*(str(cells[c]) for c in columns))
        beyond = (
            "Also: --arch torchvision:NAME, timm:NAME (mncli models --family torchvision|timm), "
            "path/to/file.py:builder, package.module:builder"
        )
        output.emit(
            {"models": rows}, as_json=as_json, table=Group(table, beyond) if family is None else table
        )
