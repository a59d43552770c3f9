"""`mncli eval`: top-1, top-5 and loss of an artifact on a dataset split."""

from __future__ import annotations

from typing import Annotated

import typer

from mncli.cli import output
from mncli.cli.options import DataDir, Device, Download, InputArtifact, InputDataset, Json, train_option
from mncli.stages.evaluate import Split
from mncli.text import fmt_num, fmt_pct

HELP = "\n\n".join(
    [
        "Evaluate an artifact: top-1 and top-5 accuracy and mean cross-entropy loss.",
        "The dataset defaults to the one recorded in the artifact, and --split val measures the "
        "validation images it was trained against.",
        "Examples:",
        "  mncli eval fp.safetensors",
        "  mncli eval fp.safetensors --dataset fashion-mnist --split val --json",
        "  mncli eval b1.safetensors --image-size 256",
    ]
)
SplitOpt = Annotated[
    Split,
    typer.Option(
        "--split", rich_help_panel="Data",
        help="test, val (the validation images of the artifact's manifest) or train.",
    ),
]  # fmt: skip
EvalBatchSize = train_option("batch_size", "Evaluation batch size.")
EvalImageSize = train_option(
    "image_size",
    "ImageNet: evaluate at N px (resize N/0.875, centre crop N) (default: the artifact's resolution).",
)


def register(app: typer.Typer) -> None:
    @app.command("eval", help=HELP)
    def eval_(
        inp: InputArtifact,
        dataset: InputDataset = None,
        split: SplitOpt = Split.TEST,
        data_dir: DataDir = None,
        download: Download = False,
        image_size: EvalImageSize = None,
        batch_size: EvalBatchSize = 256,
        device: Device = "auto",
        as_json: Json = False,
    ) -> None:
        from mncli.stages.compression import other_rank
        from mncli.stages.evaluate import EvalConfig, run

        config = EvalConfig(
            input=inp, dataset=dataset, split=split, data_dir=data_dir, download=download,
            batch_size=batch_size, device=device, image_size=image_size,
        )  # fmt: skip
        result = run(config)
        if other_rank(result):  # under torchrun rank 0 alone prints
            return
        output.emit(result, as_json=as_json, table=_table(result))


def _table(result: dict):
    from rich.table import Table

    images = f"{result['split']}, {fmt_num(result['count'])} images"
    table = Table(title=f"{result['artifact']} on {result['dataset']} ({images})")
    for column in ("top-1", "top-5", "loss"):
        table.add_column(column, justify="right")
    table.add_row(fmt_pct(result["top1"]), fmt_pct(result["top5"]), fmt_num(result["loss"]))
    return table
