"""Option types shared by the commands, named once so every stage spells them the same way.

Use as annotations: `def cmd(inp: InputArtifact, out: OutputArtifact, as_json: Json = False)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

InputArtifact = Annotated[Path, typer.Argument(help="Input artifact (.safetensors).", show_default=False)]
OutputArtifact = Annotated[
    Path, typer.Option("-o", "--out", help="Output artifact (.safetensors); written atomically.")
]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout and nothing else.")]
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
Recipe = Annotated[
    Path | None, typer.Option("--recipe", help="YAML or JSON file of per-layer settings with glob patterns.")
]
ArchOpt = Annotated[
    list[str] | None, typer.Option("--arch-opt", help="Architecture argument as key=value (repeatable).")
]
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
