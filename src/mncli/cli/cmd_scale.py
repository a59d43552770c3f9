"""`mncli scale`: EfficientNet compound scaling, one point or a grid of short trainings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mncli.cli import output
from mncli.cli.options import ArchName, ArchOpt, Json, OutputArtifact, method_option, training_options
from mncli.stages.scale import TRAIN_DEFAULTS
from mncli.stages.training import TrainOptions
from mncli.text import fmt_pct

HELP = "\n\n".join(
    [
        "Scale an architecture's depth, width (and resolution) by alpha^phi, beta^phi, gamma^phi with "
        "EfficientNet's rounding.",
        "The architecture is an input artifact's, or --arch NAME from the zoo (--arch-opt sets its "
        "arguments; classes, channels and image size come from --dataset unless given), not both.",
        "One point: --phi with --alpha/--beta/--gamma (default EfficientNet's 1.2/1.1/1.15); nothing is "
        "trained. A grid: --grid trains every (alpha, beta[, gamma]) point of --grid-points (default "
        "EC2T's CIFAR grid, alpha*beta^2 ~= 2) for --epochs and keeps the best on validation; the "
        "manifest records every point's accuracy and score, and a plot of accuracy against score is "
        "written beside the output (OUT.png). --point K runs one point alone (OUT.pointK.safetensors, "
        "checkpoints in OUT.pointK.ckpt/ for --resume) and --collect chooses among the point files "
        "present, so the grid fans out with make -j (examples/scale_grid.mk) or a cluster.",
        "A trained point's file holds its weights and metrics, and the grid's output is the winner with "
        "them: no need to train it again. One point (no grid) and points over budget are "
        "architecture-only. With --resume, points whose files already hold their trained weights are "
        "kept, the rest continue from their checkpoints.",
        "--budget-ops/--budget-params drop points over budget before training them. Resolution stays "
        "fixed on datasets of one image size (CIFAR, Fashion-MNIST, MNIST). Works on mbconv, "
        "micronet-cifar, efficientnet-bN and mobilenetv2 architectures.",
        "Examples:",
        "  mncli scale arch.safetensors --phi 1 -o scaled.safetensors",
        "  mncli scale arch.safetensors --phi 2 --grid -d fashion-mnist --epochs 3 -o scaled.safetensors",
        "  mncli scale arch.safetensors --phi 2 --point 3 -d fashion-mnist -o scaled.safetensors",
        "  mncli scale arch.safetensors --collect -o scaled.safetensors",
        "  mncli scale --arch micronet-cifar --phi 3.5 --grid --grid-points 1.4,1.2 -d cifar100 "
        "--epochs 250 -o fp.safetensors",
        "  mncli scale --arch micronet-cifar --arch-opt dropout=0 --phi 3.5 --alpha 1.4 --beta 1.2 "
        "-o arch.safetensors",
        "  make -f examples/scale_grid.mk -j2 ARCH=arch.safetensors OUT=scaled.safetensors PHI=2 "
        "DATASET=fashion-mnist",
    ]
)


def register(app: typer.Typer) -> None:
    @app.command("scale", help=HELP)
    @training_options(
        **TRAIN_DEFAULTS,
        help_dataset="Dataset the grid points train on; it fixes the resolution (fashion-mnist, mnist, "
        "cifar10, cifar100, imagenet or synthetic[:...]; default: the architecture's).",
        help_epochs="Training epochs per grid point.",
    )
    def scale(
        inp: Annotated[
            Path | None,
            typer.Argument(
                metavar="[INPUT]",
                help="Artifact whose architecture is scaled (omit with --arch).",
                show_default=False,
            ),
        ] = None,
        out: OutputArtifact = ...,
        arch: ArchName = None,
        arch_opt: ArchOpt = None,
        phi: Annotated[float | None, method_option("--phi", help="Compound coefficient phi.")] = None,
        alpha: Annotated[float | None, method_option("--alpha", help="Depth base (one point).")] = None,
        beta: Annotated[float | None, method_option("--beta", help="Width base (one point).")] = None,
        gamma: Annotated[float | None, method_option("--gamma", help="Resolution base (one point).")] = None,
        grid: Annotated[
            bool, method_option("--grid", help="Train every grid point and choose the best.")
        ] = False,
        grid_points: Annotated[
            str | None,
            method_option(
                "--grid-points", help='alpha,beta[,gamma] per point, e.g. "1.4,1.2 1.2,1.3 1.0,1.4".'
            ),
        ] = None,
        point: Annotated[int | None, method_option("--point", help="Run grid point K alone.")] = None,
        collect: Annotated[
            bool, method_option("--collect", help="Choose the best of the point files present.")
        ] = False,
        budget_ops: Annotated[
            float | None, method_option("--budget-ops", help="Drop points above this many ops.")
        ] = None,
        budget_params: Annotated[
            float | None, method_option("--budget-params", help="Drop points above this many params.")
        ] = None,
        as_json: Json = False,
        *,
        train: TrainOptions,
    ) -> None:
        from mncli.models import parse_arch_opts
        from mncli.stages.compression import other_rank
        from mncli.stages.scale import ScaleConfig, run

        config = ScaleConfig(
            arch=arch, arch_opts=parse_arch_opts(arch_opt), phi=phi, alpha=alpha, beta=beta, gamma=gamma,
            grid=grid, grid_points=grid_points, point=point, collect=collect, budget_ops=budget_ops,
            budget_params=budget_params,
        )  # fmt: skip
        result = run(inp, out, config, train)
        if other_rank(result):  # under torchrun rank 0 alone prints
            return
        output.emit(result, as_json=as_json, table=_table(result), out_path=result["output"])


def _table(result: dict):
    from rich.table import Table

    from mncli.search.cost import fmt

    points = result.get("points") or [result]
    table = Table(title=f"compound scaling, phi {result['phi']:g} -> {result['output']}")
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
            fmt_pct(p.get("val_acc")),
            status,
        )
    if result.get("plot"):
        table.caption = f"plot: {result['plot']}"
    return table
