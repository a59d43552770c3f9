"""`mncli train`: train a registered architecture from scratch, or continue an artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mncli.cli import output
from mncli.cli.options import (
    ArchOpt,
    Augment,
    BatchSize,
    DataDir,
    Device,
    Download,
    Epochs,
    GradClip,
    Json,
    KdDistillWeight,
    KdStudentWeight,
    KdTemperature,
    LabelSmoothing,
    LearningRate,
    Momentum,
    Optimizer,
    OutputArtifact,
    Precision,
    Resume,
    Schedule,
    Seed,
    Subset,
    Teacher,
    ValSize,
    WarmupEpochs,
    WeightDecay,
)
from mncli.errors import BadInput
from mncli.text import fmt_pct

HELP = "\n\n".join(
    [
        "Train a model on a dataset and save it as an artifact (weights + manifest + MicroNet score).",
        "From scratch with --arch (see `mncli models`; --arch-opt sets constructor arguments, and "
        "the number of classes, input channels and input size come from the dataset unless "
        "given), or continue an artifact (keeping its pruning masks). The validation split (5,000 "
        "images for the 10/100-class sets, split seed 0) picks the best epoch; test accuracy is "
        "measured once at the end. A checkpoint is written to OUT.ckpt/ after every epoch; Ctrl-C "
        "or SIGTERM saves one and stops, and --resume continues exactly where it stopped. Run "
        "under `torchrun --nproc-per-node N` for data-parallel training.",
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
    def train(
        inp: Annotated[
            Path | None,
            typer.Argument(help="Artifact to continue training (omit with --arch).", show_default=False),
        ] = None,
        out: OutputArtifact = ...,
        arch: Annotated[
            str | None, typer.Option("--arch", "-a", help="Architecture name (mncli models).")
        ] = None,
        arch_opt: ArchOpt = None,
        dataset: Annotated[
            str | None,
            typer.Option(
                "--dataset",
                "-d",
                help="fashion-mnist, mnist, cifar10, cifar100, imagenet or synthetic[:classes=N,shape=CxHxW]"
                " (default: the artifact's or the architecture's dataset).",
            ),
        ] = None,
        epochs: Epochs = 30,
        batch_size: BatchSize = 128,
        optimizer: Optimizer = "sgd",
        lr: LearningRate = 0.1,
        momentum: Momentum = 0.9,
        schedule: Schedule = "cosine",
        warmup_epochs: WarmupEpochs = 0.0,
        weight_decay: WeightDecay = 5e-4,
        label_smoothing: LabelSmoothing = 0.0,
        grad_clip: GradClip = 0.0,
        augment: Augment = None,
        teacher: Teacher = None,
        kd_temperature: KdTemperature = 2.0,
        kd_student_weight: KdStudentWeight = 0.5,
        kd_distill_weight: KdDistillWeight = 0.5,
        keep_last: Annotated[
            bool,
            typer.Option("--keep-last", help="Save the last epoch's weights, not the best on validation."),
        ] = False,
        val_size: ValSize = None,
        subset: Subset = None,
        data_dir: DataDir = None,
        download: Download = False,
        device: Device = "auto",
        precision: Precision = "auto",
        seed: Seed = 0,
        resume: Resume = False,
        as_json: Json = False,
    ) -> None:
        from mncli.models import default_dataset, parse_arch_opts
        from mncli.stages.evaluate import dataset_for_input
        from mncli.stages.train import TrainOptions, TrainStageConfig, run

        if inp is not None and arch is not None:
            raise BadInput("give an input artifact or --arch, not both", hint="drop one of them")
        if inp is None and arch is None:
            raise BadInput(
                "nothing to train", hint="give --arch NAME (see `mncli models`) or an input artifact"
            )
        if inp is not None and not inp.is_file():
            raise BadInput(f"input {inp} not found", hint="give the path of a .safetensors artifact")
        arch_args = parse_arch_opts(arch_opt)
        if inp is not None:
            dataset = dataset_for_input(inp, dataset)
        elif dataset is None:
            dataset = default_dataset(arch, arch_args)
            if not dataset:
                raise BadInput("no dataset given", hint="add --dataset fashion-mnist (or another)")
        options = TrainOptions(
            dataset=dataset, data_dir=data_dir, download=download, subset=subset, val_size=val_size,
            epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=momentum,
            schedule=schedule, warmup_epochs=warmup_epochs, weight_decay=weight_decay,
            label_smoothing=label_smoothing, grad_clip=grad_clip, augment=augment, teacher=teacher,
            kd_temperature=kd_temperature, kd_student_weight=kd_student_weight,
            kd_distill_weight=kd_distill_weight, device=device, precision=precision, seed=seed, out=out,
            resume=resume,
        )  # fmt: skip
        result = run(
            TrainStageConfig(
                options=options, arch=arch, arch_opts=arch_args, input=inp, keep_best=not keep_last
            )
        )
        if "output" not in result:  # a DDP rank other than 0: rank 0 prints
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
