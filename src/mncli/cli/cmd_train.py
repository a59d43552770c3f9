"""`mncli train`: train a registered architecture from scratch, or continue an artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mncli.cli import output
from mncli.cli.options import ArchName, ArchOpt, Json, OutputArtifact, training_options
from mncli.errors import BadInput
from mncli.stages.training import TrainOptions
from mncli.text import fmt_pct

HELP = "\n\n".join(
    [
        "Train a model on a dataset and save it as an artifact (weights, manifest and MicroNet score).",
        "From scratch with --arch (see `mncli models`; --arch-opt sets constructor arguments; the "
        "classes, input channels and input size come from the dataset unless given), or continue an "
        "artifact, whose pruned zeros stay zero.",
        "The validation split (5,000 images for the 10- and 100-class sets, split seed 0) picks the best "
        "epoch; test accuracy is measured once at the end. A checkpoint is written to OUT.ckpt/ after "
        "every epoch; Ctrl-C or SIGTERM saves one and stops, and --resume continues exactly where it "
        "stopped. Run under `torchrun --nproc-per-node N` for data-parallel training.",
        "On CPU the engine uses channels_last and bfloat16 autocast where the processor has native bf16.",
        "Examples:",
        "  mncli train --arch fmnist-net --dataset fashion-mnist --epochs 30 -o fp.safetensors",
        "  mncli train --arch resnet20 -d cifar10 --lr 0.1 --wd 1e-4 -o r20.safetensors",
        "  mncli train fp.safetensors -d fashion-mnist --epochs 5 --lr 0.01 -o ft.safetensors",
        "  mncli train --arch lenet5 -d fashion-mnist --teacher fp.safetensors --epochs 20 -o kd.safetensors",
        "  mncli train --arch test-cnn -d synthetic:shape=3x16x16 --epochs 2 --subset 500 -o t.safetensors",
    ]
)


def register(app: typer.Typer) -> None:
    @app.command("train", help=HELP)
    @training_options()
    def train(
        inp: Annotated[
            Path | None,
            typer.Argument(
                metavar="[INPUT]",
                help="Artifact to continue training (omit with --arch).",
                show_default=False,
            ),
        ] = None,
        out: OutputArtifact = ...,
        arch: ArchName = None,
        arch_opt: ArchOpt = None,
        keep_last: Annotated[
            bool,
            typer.Option("--keep-last", help="Save the last epoch's weights, not the best on validation."),
        ] = False,
        as_json: Json = False,
        *,
        train: TrainOptions,
    ) -> None:
        from mncli.models import parse_arch_opts
        from mncli.stages.compression import other_rank
        from mncli.stages.train import TrainStageConfig, run

        if inp is not None and arch is not None:
            raise BadInput("give an input artifact or --arch, not both", hint="drop one of them")
        if inp is None and arch is None:
            raise BadInput(
                "nothing to train", hint="give --arch NAME (see `mncli models`) or an input artifact"
            )
        arch_args = parse_arch_opts(arch_opt)
        config = TrainStageConfig(arch=arch, arch_opts=arch_args, keep_best=not keep_last)
        result = run(inp, out, config, train)
        if other_rank(result):  # under torchrun rank 0 alone prints
            return
        output.emit(result, as_json=as_json, table=_table(result), out_path=str(out))


def _table(result: dict):
    from rich.table import Table

    table = Table(title=f"train {result['arch']} on {result['dataset']} -> {result['output']}")
    table.add_column("")
    table.add_column("value", justify="right")
    score = result.get("score")
    rows = [
        ("parameters", f"{result['params']:,}"),
        ("epochs (best)", f"{result['epochs']} ({result['best_epoch']})"),
        ("val top-1", fmt_pct(result.get("val_acc"))),
        ("test top-1", fmt_pct(result.get("test_acc"))),
        ("test top-5", fmt_pct(result.get("test_top5"))),
        ("MicroNet score", "-" if score is None else f"{score:.5f}"),
        ("wall time", f"{result.get('wall_time_s', 0):.0f} s"),
        ("images/s", f"{result.get('images_per_s') or 0:,.0f}"),
        ("runtime", " ".join(f"{k}={v}" for k, v in (result.get("runtime") or {}).items() if k != "torch")),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table
