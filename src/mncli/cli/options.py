"""Option types shared by the commands, named once so every command spells them the same way.

Use as annotations: `def cmd(inp: InputArtifact, out: OutputArtifact, as_json: Json = False)`, and
`@training_options(epochs=3, lr=0.01)` on a training command: it adds every field of
`mncli.stages.training.TrainOptions` as an option (in the Data and Training help panels, with the
command's defaults), and hands the command one `train: TrainOptions`.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Annotated

import typer

from mncli.stages.training import TrainOptions

OUTPUT, METHOD = "Output", "Method"

InputArtifact = Annotated[
    Path, typer.Argument(metavar="INPUT", help="Input artifact (.safetensors).", show_default=False)
]
OutputArtifact = Annotated[
    Path,
    typer.Option(
        "-o", "--out", metavar="OUTPUT", rich_help_panel=OUTPUT,
        help="Output artifact (.safetensors); written atomically.",
    ),
]  # fmt: skip
Json = Annotated[
    bool,
    typer.Option("--json", rich_help_panel=OUTPUT, help="Print one JSON object on stdout and nothing else."),
]
Recipe = Annotated[
    Path | None,
    typer.Option(
        "--recipe", rich_help_panel=METHOD, help="YAML or JSON file of per-layer settings with glob patterns."
    ),
]
ArchOpt = Annotated[
    list[str] | None, typer.Option("--arch-opt", help="Architecture argument as key=value (repeatable).")
]


def _hints() -> dict[str, typing.Any]:
    return typing.get_type_hints(TrainOptions)


def _cli_type(name: str) -> typing.Any:
    meta = _field(name).metadata
    return str | None if meta["parse"] is not None else _hints()[name]


def _field(name: str):
    return next(f for f in fields(TrainOptions) if f.name == name)


def train_option(name: str, help: str | None = None) -> typing.Any:
    """The Typer annotation of one TrainOptions field (for commands that read data but do not train,
    e.g. `eval --data-dir`): the same flags, help and panel as on the training commands."""
    meta = _field(name).metadata
    option = typer.Option(*meta["flags"], help=help or meta["help"], rich_help_panel=meta["panel"])
    return Annotated[_cli_type(name), option]


def _default(name: str) -> typing.Any:
    f = _field(name)
    return f.default_factory() if f.default is MISSING else f.default


def training_options(**defaults: typing.Any) -> Callable:
    """Give a Typer command every TrainOptions field as an option and call it with `train=TrainOptions`.

    `defaults` are the command's own (they show in --help); None means "the method's default", which
    the stage fills in with `TrainOptions.resolved`. A `help_<name>` keyword replaces one option's help
    text, e.g. to say what the default is per method.
    """
    helps = {k.removeprefix("help_"): v for k, v in defaults.items() if k.startswith("help_")}
    defaults = {k: v for k, v in defaults.items() if not k.startswith("help_")}
    names = [f.name for f in fields(TrainOptions)]
    unknown = (set(defaults) | set(helps)) - set(names)
    if unknown:
        raise TypeError(f"not training options: {sorted(unknown)}")

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command)
        own = [p for p in signature.parameters.values() if p.name != "train"]
        added = [
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, annotation=train_option(name, helps.get(name)),
                default=defaults.get(name, _default(name)),
            )
            for name in names
        ]  # fmt: skip

        @functools.wraps(command)
        def wrapper(*args: typing.Any, **kwargs: typing.Any) -> typing.Any:
            values = {name: kwargs.pop(name) for name in names}
            for name in names:
                parse = _field(name).metadata["parse"]
                if parse is not None:
                    values[name] = parse(values[name])
            return command(*args, train=TrainOptions(**values), **kwargs)

        wrapper.__signature__ = signature.replace(parameters=[*own, *added])
        return wrapper

    return decorate


# TRANSITION: hand-written training option types, removed once every command uses training_options.
Dataset = Annotated[
    str,
    typer.Option("--dataset", "-d", help="fashion-mnist, mnist, cifar10, cifar100, imagenet or synthetic."),
]
InputDataset = Annotated[
    str | None,
    typer.Option(
        "--dataset",
        "-d",
        help="fashion-mnist, mnist, cifar10, cifar100, imagenet or synthetic[:...]"
        " (default: the dataset the input was trained on).",
    ),
]
DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Where datasets are looked for first (then $MNCLI_DATA).")
]
Download = Annotated[bool, typer.Option("--download", help="Download with torchvision if missing.")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed (data order, init, splits).")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
Subset = Annotated[
    int | None,
    typer.Option("--subset", help="Use only N training images (seeded), for quick trials."),
]
Epochs = Annotated[int, typer.Option("--epochs", help="Training epochs.")]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", help="Batch size per process.")]
LearningRate = Annotated[float, typer.Option("--lr", help="Peak learning rate.")]
Optimizer = Annotated[str, typer.Option("--optimizer", help="sgd (nesterov), adam or adamw.")]
Schedule = Annotated[str, typer.Option("--schedule", help="cosine, onecycle, step or constant.")]
WeightDecay = Annotated[
    float, typer.Option("--weight-decay", "--wd", help="Weight decay (not on BN, bias, scales).")
]
Teacher = Annotated[
    Path | None, typer.Option("--teacher", help="Teacher artifact for knowledge distillation.")
]
Resume = Annotated[bool, typer.Option("--resume", help="Continue from OUT.ckpt/ where a killed run stopped.")]
Momentum = Annotated[float, typer.Option("--momentum", help="SGD momentum (nesterov).")]
WarmupEpochs = Annotated[float, typer.Option("--warmup-epochs", help="Linear warm-up epochs.")]
LabelSmoothing = Annotated[float, typer.Option("--label-smoothing", help="Label smoothing.")]
GradClip = Annotated[float, typer.Option("--grad-clip", help="Max gradient norm (0: off).")]
Augment = Annotated[
    str | None,
    typer.Option("--augment", help="default, none, or e.g. crop=4,flip,cutout=8 (default per dataset)."),
]
KdTemperature = Annotated[float, typer.Option("--kd-temperature", help="KD temperature T.")]
KdStudentWeight = Annotated[float, typer.Option("--kd-student-weight", help="KD: weight of CE.")]
KdDistillWeight = Annotated[float, typer.Option("--kd-distill-weight", help="KD: weight of T^2 * KL.")]
ValSize = Annotated[int | None, typer.Option("--val-size", help="Images held out for validation.")]
MaxStepsPerEpoch = Annotated[
    int | None, typer.Option("--max-steps-per-epoch", help="Cap on batches per epoch (quick trials).")
]
Precision = Annotated[
    str, typer.Option("--precision", help="auto, fp32, bf16 (CPU/GPU autocast) or fp16 (CUDA).")
]


# For commands that read a dataset without training (eval, score, verify).
InputDataset = train_option(
    "dataset",
    "fashion-mnist, mnist, cifar10, cifar100, imagenet or synthetic[:...] "
    "(default: the dataset the input was trained on).",
)
DataDir = train_option("data_dir")
Download = train_option("download")
Device = train_option("device")
