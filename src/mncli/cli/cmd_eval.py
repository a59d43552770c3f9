"""`mncli eval`: top-1, top-5 and loss of an artifact on a dataset split."""

from __future__ import annotations

from typing import Annotated

import typer

from mncli.cli import output
from mncli.cli.options import DataDir, Device, Download, InputArtifact, Json

HELP = "\n\n".join(
    [
        "Evaluate an artifact: top-1 and top-5 accuracy and mean cross-entropy loss.",
        "--split val uses the validation images the artifact was trained against (its manifest's "
        "split); the default is the test set. The dataset defaults to the one recorded in the "
        "artifact.",
        "Examples:",
        "  mncli eval fp.safetensors",
        "  mncli eval fp.safetensors --dataset fashion-mnist --split val --json",
    ]
)


def register(app: typer.Typer) -> None:
    @app.command("eval", help=HELP)
    def eval_(
        inp: InputArtifact,
        dataset: Annotated[
            str | None,
            typer.Option("--dataset", "-d", help="Dataset (default: the one recorded in the artifact)."),
        ] = None,
        split: Annotated[str, typer.Option("--split", help="test or val.")] = "test",
        batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Evaluation batch size.")] = 256,
        data_dir: DataDir = None,
        download: Download = False,
        device: Device = "auto",
        as_json: Json = False,
    ) -> None:
        from mncli.errors import BadInput
        from mncli.stages.evaluate import EvalConfig, run

        if not inp.is_file():
            raise BadInput(f"input {inp} not found", hint="give the path of a .safetensors artifact")
        result = run(
            EvalConfig(
                input=inp, dataset=dataset, split=split, data_dir=data_dir, download=download,
                batch_size=batch_size, device=device,
            )
        )  # fmt: skip
        output.emit(result, as_json=as_json, table=_table(result))


def _table(result: dict):
    from rich.table import Table

    table = Table(
        title=f"{result['artifact']} on {result['dataset']} ({result['split']}, {result['count']:,} images)"
    )
    for column in ("top-1", "top-5", "loss"):
        table.add_column(column, justify="right")
    table.add_row(f"{100 * result['top1']:.2f} %", f"{100 * result['top5']:.2f} %", f"{result['loss']:.4f}")
    return table
