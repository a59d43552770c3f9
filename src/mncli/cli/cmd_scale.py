"""`mncli scale`: EfficientNet compound scaling, one point or a grid of short trainings."""

from __future__ import annotations

from typing import Annotated

import typer

from mncli.cli import output
from mncli.cli.options import (
    BatchSize,
    DataDir,
    Device,
    Download,
    InputArtifact,
    Json,
    LabelSmoothing,
    LearningRate,
    MaxStepsPerEpoch,
    Optimizer,
    OutputArtifact,
    Schedule,
    Seed,
    Subset,
    ValSize,
    WeightDecay,
)

HELP = (
    "Scale an architecture's depth, width (and resolution) by alpha^phi, beta^phi, gamma^phi with "
    "EfficientNet's rounding.\n\n"
    "One point: --phi with --alpha/--beta/--gamma (default EfficientNet's 1.2/1.1/1.15); nothing is "
    "trained. A grid: --grid trains every (alpha, beta[, gamma]) point of --grid-points (default EC2T's "
    "CIFAR grid, alpha*beta^2 ~= 2) for --epochs and keeps the best on validation; the manifest records "
    "every point's accuracy and score, and a plot of accuracy against score is written beside the "
    "output (OUT.png). --point K runs one point alone (OUT.pointK.safetensors) and --collect chooses "
    "among the point files present, so the grid fans out with make -j (examples/scale_grid.mk) or a "
    "cluster. --budget-ops/--budget-params drop points over budget before training them. Resolution "
    "stays fixed on datasets of one image size (CIFAR, Fashion-MNIST, MNIST). Works on mbconv, "
    "micronet-cifar, efficientnet-bN and mobilenetv2 architectures; the output is architecture-only.\n\n"
    "Examples:\n\n"
    "  mncli scale arch.safetensors --phi 1 -o scaled.safetensors\n\n"
    "  mncli scale arch.safetensors --phi 2 --grid -d fashion-mnist --epochs 3 -o scaled.safetensors\n\n"
    "  mncli scale arch.safetensors --phi 2 --point 3 -d fashion-mnist -o scaled.safetensors\n\n"
    "  mncli scale arch.safetensors --collect -o scaled.safetensors\n\n"
    "  make -f examples/scale_grid.mk -j2 ARCH=arch.safetensors OUT=scaled.safetensors PHI=2 "
    "DATASET=fashion-mnist"
)


def register(app: typer.Typer) -> None:
    @app.command("scale", help=HELP)
    def scale(
        inp: InputArtifact,
        out: OutputArtifact,
        phi: Annotated[float | None, typer.Option("--phi", help="Compound coefficient phi.")] = None,
        alpha: Annotated[float | None, typer.Option("--alpha", help="Depth base (one point).")] = None,
        beta: Annotated[float | None, typer.Option("--beta", help="Width base (one point).")] = None,
        gamma: Annotated[float | None, typer.Option("--gamma", help="Resolution base (one point).")] = None,
        grid: Annotated[
            bool, typer.Option("--grid", help="Train every grid point and choose the best.")
        ] = False,
        grid_points: Annotated[
            str | None,
            typer.Option(
                "--grid-points", help='alpha,beta[,gamma] per point, e.g. "1.4,1.2 1.2,1.3 1.0,1.4".'
            ),
        ] = None,
        point: Annotated[int | None, typer.Option("--point", help="Run grid point K alone.")] = None,
        collect: Annotated[
            bool, typer.Option("--collect", help="Choose the best of the point files present.")
        ] = False,
        budget_ops: Annotated[
            float | None, typer.Option("--budget-ops", help="Drop points above this many ops.")
        ] = None,
        budget_params: Annotated[
            float | None, typer.Option("--budget-params", help="Drop points above this many params.")
        ] = None,
        dataset: Annotated[
            str | None,
            typer.Option("--dataset", "-d", help="Dataset the grid points train on (fixes the resolution)."),
        ] = None,
        epochs: Annotated[int, typer.Option("--epochs", help="Training epochs per grid point.")] = 5,
        batch_size: BatchSize = 128,
        lr: LearningRate = 0.1,
        optimizer: Optimizer = "sgd",
        weight_decay: WeightDecay = 5e-4,
        schedule: Schedule = "cosine",
        label_smoothing: LabelSmoothing = 0.0,
        max_steps: MaxStepsPerEpoch = None,
        augment: Annotated[
            str | None, typer.Option("--augment", help='default, none or e.g. "crop=4,flip".')
        ] = None,
        precision: Annotated[str, typer.Option("--precision", help="auto, fp32 or bf16.")] = "auto",
        data_dir: DataDir = None,
        download: Download = False,
        subset: Subset = None,
        val_size: ValSize = None,
        seed: Seed = 0,
        device: Device = "auto",
        as_json: Json = False,
    ) -> None:
        from mncli.stages.scale import ScaleConfig, run

        cfg = ScaleConfig(
            input=inp, out=out, phi=phi, alpha=alpha, beta=beta, gamma=gamma, grid=grid,
            grid_points=grid_points, point=point, collect=collect, budget_ops=budget_ops,
            budget_params=budget_params, dataset=dataset, epochs=epochs, batch_size=batch_size, lr=lr,
            optimizer=optimizer, weight_decay=weight_decay, schedule=schedule,
            label_smoothing=label_smoothing, max_steps_per_epoch=max_steps, augment=augment,
            precision=precision, data_dir=data_dir,
            download=download, subset=subset, val_size=val_size, seed=seed, device=device,
        )  # fmt: skip
        result = run(cfg)
        output.emit(result, as_json=as_json, table=_table(result), out_path=result["out"])


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def _table(result: dict):
    from rich.table import Table

    from mncli.search.cost import fmt

    points = result.get("points") or [result]
    table = Table(title=f"compound scaling, phi {result['phi']:g} -> {result['out']}")
    for column in ("K", "a,b,g", "d x w", "px", "params", "ops", "score", "val top-1", ""):
        table.add_column(column, justify="right")
    for p in points:
        chosen = result["mode"] == "grid" and result.get("choice") == p.get("point")
        status = "chosen" if chosen else ("over budget" if p.get("status") == "over budget" else "")
        table.add_row(
            str(p.get("point", "-")),
            f"{p['alpha']:g},{p['beta']:g},{p['gamma']:g}",
            f"{p['depth_mult']:.2f} x {p['width_mult']:.2f}",
            str(p["arch"]["args"].get("input_size", "-")),
            fmt(p["score"]["params"], "params"),
            fmt(p["score"]["ops"], "ops"),
            f"{p['score']['score']:.5f}",
            _pct(p.get("val_acc")),
            status,
        )
    if result.get("plot"):
        table.caption = f"plot: {result['plot']}"
    return table
