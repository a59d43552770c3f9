"""`mncli ternarize`: TTQ (paper or MIT variant) and EC2T, stored as real 2-bit codes."""

from __future__ import annotations

from typing import Annotated

import typer

from mncli.cli import output
from mncli.cli.options import (
    DataDir,
    Device,
    Download,
    InputArtifact,
    InputDataset,
    Json,
    OutputArtifact,
    Resume,
    Seed,
    Subset,
    Teacher,
    ValSize,
)
from mncli.errors import BadInput
from mncli.text import fmt_num, fmt_pct

HELP_TEXT = """Ternarize weights to {-Wn, 0, +Wp} per layer by fine-tuning, and store them as 2-bit codes.

--method ttq (Zhu et al. 2017, the paper version): threshold --threshold * max|w| (0.05), learned
Wp, Wn with the correct gradient sign, scaled straight-through, Wp/Wn kept >= 1e-3 and out of weight
decay. Paper optimiser: SGD lr 0.1, momentum 0.9, weight decay 2e-4, LR x0.1 at 82/123/150 of ~164
epochs -- here at the same fractions of --epochs (default 20, ours).

--variant mit (the ProxylessNAS CIFAR-100 seed): threshold 0.7 * mean|w|, scale = mean |w| above it
times signed learned wp/wn, identity straight-through; seed defaults: 30 epochs, SGD 0.01 nesterov,
cosine, weight decay 1e-4.

--method ec2t (Marban et al. 2020): entropy-constrained assignment (--lambda-div, --ini-c; P_0 >= 0.5,
per-layer decay, centroids >= 0.675 * std(w)), Adam 1e-4 (weights) / 1e-5 (centroids) / 1e-4 with
weight decay 5e-6 (the rest), then --retrain-epochs with the assignment frozen. Seed defaults: ini_c
0.45, lambda_div 0.15, 20 + 20 epochs. Larger --lambda-div gives more zeros. --grid runs every
(ini_c, lambda_div) pair (default 0.15,0.3,0.45,0.5 x 0.125,0.15,0.175); --point K runs only pair K
into OUT.pointK.safetensors (fan the grid out over machines); --collect keeps the point best on
validation as OUT.

Layers: block convs by default; the stem, the classifier, 1x1 shortcuts, squeeze-excite and
depthwise convs stay full precision. --layers PATTERN names layers instead ('!PATTERN' removes).
Zeros of a pruned input stay zero. Every other option not given keeps the method's original default.

Examples:

  mncli ternarize fp.safetensors -d fashion-mnist --method ttq -o ttq.safetensors

  mncli ternarize fp.safetensors -d fashion-mnist --method ttq --variant mit --epochs 5 -o mit.safetensors

  mncli ternarize pruned.safetensors -d fashion-mnist --method ec2t --lambda-div 0.175 -o ec2t.safetensors

  mncli ternarize fp.safetensors -d cifar100 -m ec2t --grid --point 3 -o ec2t.safetensors   (one job per K)

  mncli ternarize fp.safetensors -d cifar100 -m ec2t --grid --collect -o ec2t.safetensors
"""


def _unwrap(text: str) -> str:
    """Join the lines of each paragraph (the help renderer keeps single newlines)."""
    paragraphs = text.strip().split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


HELP = _unwrap(HELP_TEXT)


def _floats(text: str | None, option: str) -> list[float]:
    if not text:
        return []
    try:
        return [float(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise BadInput(
            f"{option} needs comma-separated numbers, got {text!r}", hint="e.g. 0.125,0.15"
        ) from None


def _ints(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise BadInput(
            f"--milestones needs comma-separated epochs, got {text!r}", hint="e.g. 10,15"
        ) from None


def register(app: typer.Typer) -> None:
    @app.command("ternarize", help=HELP)
    def ternarize(
        inp: InputArtifact,
        out: OutputArtifact,
        dataset: InputDataset = None,
        method: Annotated[str, typer.Option("--method", "-m", help="ttq or ec2t.")] = "ttq",
        variant: Annotated[
            str, typer.Option("--variant", help="TTQ: paper (t*max|w|) or mit (0.7*mean|w|, signed scales).")
        ] = "paper",
        threshold: Annotated[
            float | None,
            typer.Option("--threshold", "-t", help="TTQ threshold factor in (0, 1) (paper 0.05, mit 0.7)."),
        ] = None,
        scale_init: Annotated[
            str, typer.Option("--scale-init", help="TTQ: Wp/Wn start at the mean |w| of each side, or one.")
        ] = "mean",
        layers: Annotated[
            list[str] | None,
            typer.Option(
                "--layers", help="Glob pattern of layers to ternarize (repeatable; '!pat' excludes)."
            ),
        ] = None,
        include_depthwise: Annotated[
            bool, typer.Option("--include-depthwise", help="Ternarize depthwise convs too (default: no).")
        ] = False,
        epochs: Annotated[
            int | None, typer.Option("--epochs", help="Fine-tuning epochs (ttq 20, mit 30, ec2t 20).")
        ] = None,
        retrain_epochs: Annotated[
            int | None,
            typer.Option("--retrain-epochs", help="EC2T: epochs with the assignment frozen (default 20)."),
        ] = None,
        batch_size: Annotated[
            int | None, typer.Option("--batch-size", "-b", help="Batch size (128).")
        ] = None,
        lr: Annotated[
            float | None, typer.Option("--lr", help="Peak LR (ttq 0.1, mit 0.01, ec2t 1e-4 for the rest).")
        ] = None,
        scale_lr: Annotated[
            float | None, typer.Option("--scale-lr", help="TTQ: LR of Wp/Wn (default: --lr).")
        ] = None,
        latent_lr: Annotated[
            float | None, typer.Option("--latent-lr", help="EC2T: Adam LR of the fp weights (1e-4).")
        ] = None,
        centroid_lr: Annotated[
            float | None, typer.Option("--centroid-lr", help="EC2T: Adam LR of the centroids (1e-5).")
        ] = None,
        momentum: Annotated[float | None, typer.Option("--momentum", help="SGD momentum (0.9).")] = None,
        weight_decay: Annotated[
            float | None,
            typer.Option("--weight-decay", "--wd", help="Weight decay (ttq 2e-4, mit 1e-4, ec2t 5e-6)."),
        ] = None,
        schedule: Annotated[
            str | None,
            typer.Option(
                "--schedule", help="step, cosine, onecycle or constant (ttq step, mit cosine, ec2t constant)."
            ),
        ] = None,
        milestones: Annotated[
            str | None, typer.Option("--milestones", help="Step schedule epochs, e.g. 10,15,18.")
        ] = None,
        ini_c: Annotated[
            str | None,
            typer.Option("--ini-c", help="EC2T: centroid init c*max|w| (0.45; comma list with --grid)."),
        ] = None,
        lambda_div: Annotated[
            str | None,
            typer.Option("--lambda-div", help="EC2T: constraint strength (0.15; comma list with --grid)."),
        ] = None,
        grid: Annotated[bool, typer.Option("--grid", help="EC2T: grid over --ini-c x --lambda-div.")] = False,
        point: Annotated[
            int | None,
            typer.Option("--point", help="With --grid: run only point K -> OUT.pointK.safetensors."),
        ] = None,
        collect: Annotated[
            bool, typer.Option("--collect", help="With --grid: keep the best point present as OUT.")
        ] = False,
        select_by: Annotated[
            str,
            typer.Option(
                "--select-by", help="Grid pick: accuracy (best val) or score (lowest within --tolerance)."
            ),
        ] = "accuracy",
        tolerance: Annotated[
            float,
            typer.Option(
                "--tolerance", help="--select-by score: allowed val-accuracy drop (0.005 = 0.5 pt)."
            ),
        ] = 0.005,
        teacher: Teacher = None,
        resume: Resume = False,
        data_dir: DataDir = None,
        download: Download = False,
        subset: Subset = None,
        val_size: ValSize = None,
        seed: Seed = 0,
        device: Device = "auto",
        as_json: Json = False,
    ) -> None:
        from mncli.stages.evaluate import dataset_for_input
        from mncli.stages.ternarize import TernarizeConfig, run

        cfg = TernarizeConfig(
            input=inp, out=out, dataset=dataset_for_input(inp, dataset), method=method, variant=variant,
            threshold=threshold, scale_init=scale_init, layers=list(layers or []),
            include_depthwise=include_depthwise,
            epochs=epochs, retrain_epochs=retrain_epochs, batch_size=batch_size, lr=lr, scale_lr=scale_lr,
            latent_lr=latent_lr, centroid_lr=centroid_lr, momentum=momentum, weight_decay=weight_decay,
            schedule=schedule, milestones=_ints(milestones), teacher=teacher,
            ini_c=_floats(ini_c, "--ini-c"), lambda_div=_floats(lambda_div, "--lambda-div"),
            grid=grid, point=point, collect=collect, select_by=select_by, tolerance=tolerance,
            data_dir=data_dir, download=download, subset=subset, val_size=val_size, seed=seed,
            device=device, resume=resume,
        )  # fmt: skip
        result = run(cfg)
        output.emit(result, as_json=as_json, table=_table(result), out_path=str(out))


def _table(result: dict):
    from rich.table import Table

    if "points" in result:  # a collected grid
        table = Table(title=f"ternarize grid -> {result['output']} (kept point {result['chosen']['point']})")
        for col in ("point", "ini_c", "lambda_div", "val acc", "test acc", "sparsity", "score"):
            table.add_column(col, justify="right")
        for r in result["points"]:
            table.add_row(str(r["point"]), fmt_num(r["ini_c"]), fmt_num(r["lambda_div"]),
                          fmt_pct(r["val_acc"]), fmt_pct(r["test_acc"]), fmt_pct(r["ternary_sparsity"]),
                          fmt_num(r["score"]))  # fmt: skip
        return table
    table = Table(title=f"ternarize ({result['method']}) -> {result['output']}")
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_row("val acc", fmt_pct(result["val_acc_before"]), fmt_pct(result["val_acc"]))
    table.add_row("test acc", fmt_pct(result["test_acc_before"]), fmt_pct(result["test_acc"]))
    table.add_row("score", fmt_num(result["score_before"]), fmt_num(result["score"]))
    table.add_row("ternary layers", "", str(result["ternary_layers"]))
    table.add_row("ternary sparsity", "", fmt_pct(result["ternary_sparsity"]))
    table.add_row(
        "ternary bytes (charged)", "", f"{result['ternary_bytes']:,} ({result['ternary_bytes_charged']:,.0f})"
    )
    table.add_row("file bytes", "", f"{result['file_bytes']:,}")
    return table
