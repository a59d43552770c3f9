"""`mncli ternarize`: TTQ (paper or MIT variant) and EC2T, stored as real 2-bit codes."""

from __future__ import annotations

from typing import Annotated

import typer

from mncli.cli import output
from mncli.cli.options import InputArtifact, Json, OutputArtifact, method_option, training_options
from mncli.stages.ternarize import ScaleInit, SelectBy, TernaryMethod, TTQVariant
from mncli.stages.training import TrainOptions
from mncli.text import fmt_num, fmt_pct, parse_list

HELP = "\n\n".join(
    [
        "Ternarize weights to {-Wn, 0, +Wp} per layer by fine-tuning, and store them as 2-bit codes.",
        "--method ttq is trained ternary quantization (Zhu et al. 2017), --variant mit the ProxylessNAS "
        "CIFAR-100 seed's version of it; --method ec2t is entropy-constrained ternarization (Marban et "
        "al. 2020): larger --lambda-div gives more zeros. --grid runs EC2T over --ini-c x --lambda-div; "
        "--point K runs only pair K into OUT.pointK.safetensors (one job per K); --collect keeps the "
        "point best on validation as OUT.",
        "Block convs are ternarized by default; the stem, the classifier, 1x1 shortcuts, squeeze-excite "
        "and depthwise convs stay full precision. Zeros of a pruned input stay zero. Training options "
        "not given keep the method's original defaults.",
        "-m ec2t --do-prune is EC2T's second step, entropy-controlled pruning: the squeeze-excite convs "
        "and the classifier (by default) go through the same assignment, but each weight either becomes "
        "zero or keeps its full-precision value; the input's ternary layers stay as they are. Defaults: "
        "--ini-c 0.25, --lambda-div 0.15, 10 epochs, no retraining.",
        "Examples:",
        "  mncli ternarize fp.safetensors -d fashion-mnist -m ttq -o ttq.safetensors",
        "  mncli ternarize fp.safetensors --variant mit --epochs 5 -o mit.safetensors",
        "  mncli ternarize p.safetensors -m ec2t --lambda-div 0.175 -o t.safetensors",
        "  mncli ternarize fp.safetensors -m ec2t --grid --point 3 -o t.safetensors",
        "  mncli ternarize fp.safetensors -m ec2t --grid --collect -o t.safetensors",
        "  mncli ternarize t.safetensors -m ec2t --do-prune -o tp.safetensors",
    ]
)


def register(app: typer.Typer) -> None:
    @app.command("ternarize", help=HELP)
    @training_options(
        epochs=None, batch_size=None, lr=None, optimizer=None, momentum=None,
        weight_decay=None, schedule=None, milestones=None, step_gamma=None,
        help_epochs="Fine-tuning epochs (default: ttq 20, mit 30, ec2t 20, ec2t --do-prune 10).",
        help_batch_size="Batch size per process (default 128).",
        help_lr="Peak learning rate (default: ttq 0.1, mit 0.01, ec2t 1e-4 for the non-ternary weights).",
        help_optimizer="sgd, adam or adamw (default: ttq and mit sgd, ec2t adam).",
        help_momentum="SGD momentum (default 0.9).",
        help_nesterov="Plain momentum for SGD instead of Nesterov's (default: ttq plain, mit Nesterov).",
        help_weight_decay="Weight decay, not on BatchNorm, biases or scales (default: ttq 2e-4, mit 1e-4, "
        "ec2t 5e-6).",
        help_schedule="cosine, onecycle, step or constant (default: ttq step, mit cosine, ec2t constant).",
        help_milestones="Step schedule: epochs where the LR is multiplied by --step-gamma (default ttq: "
        "82/164, 123/164 and 150/164 of --epochs, as in the paper).",
        help_step_gamma="Step schedule: the LR factor (default 0.1).",
    )  # fmt: skip
    def ternarize(
        inp: InputArtifact,
        out: OutputArtifact,
        method: Annotated[
            TernaryMethod, method_option("--method", "-m", help="ttq or ec2t.")
        ] = TernaryMethod.TTQ,
        variant: Annotated[
            TTQVariant,
            method_option("--variant", help="TTQ: paper (t*max|w|) or mit (0.7*mean|w|, signed scales)."),
        ] = TTQVariant.PAPER,
        threshold: Annotated[
            float | None,
            method_option("--threshold", "-t", help="TTQ threshold factor in (0, 1) (paper 0.05, mit 0.7)."),
        ] = None,
        scale_init: Annotated[
            ScaleInit,
            method_option("--scale-init", help="TTQ: Wp/Wn start at the mean |w| of each side, or one."),
        ] = ScaleInit.MEAN,
        layers: Annotated[
            list[str] | None,
            method_option(
                "--layers", help="Glob pattern of layers to ternarize (repeatable; '!pat' excludes)."
            ),
        ] = None,
        include_depthwise: Annotated[
            bool, method_option("--include-depthwise", help="Ternarize depthwise convs too (default: no).")
        ] = False,
        retrain_epochs: Annotated[
            int | None,
            method_option(
                "--retrain-epochs", help="EC2T: epochs with the assignment frozen (default 20; --do-prune 0)."
            ),
        ] = None,
        scale_lr: Annotated[
            float | None, method_option("--scale-lr", help="TTQ: LR of Wp/Wn (default: --lr).")
        ] = None,
        latent_lr: Annotated[
            float | None, method_option("--latent-lr", help="EC2T: Adam LR of the fp weights (default 1e-4).")
        ] = None,
        centroid_lr: Annotated[
            float | None,
            method_option("--centroid-lr", help="EC2T: Adam LR of the centroids (default 1e-5)."),
        ] = None,
        ini_c: Annotated[
            str | None,
            method_option(
                "--ini-c",
                "--ini-c-divrs",
                help="EC2T: centroids start at c*max(w) and c*|min(w)| (0.45, --do-prune 0.25; comma list "
                "with --grid; --ini-c-divrs is EC2T's name), e.g. --ini-c 0.45.",
            ),
        ] = None,
        lambda_div: Annotated[
            str | None,
            method_option(
                "--lambda-div",
                "--lambda-max-divrs",
                help="EC2T: constraint strength, the multiplier of each layer's lambda_max (0.15; comma "
                "list with --grid; --lambda-max-divrs is EC2T's name), e.g. --lambda-div 0.15.",
            ),
        ] = None,
        grid: Annotated[
            bool,
            method_option(
                "--grid",
                help="EC2T: every --ini-c x --lambda-div pair (default 0.15,0.3,0.45,0.5 x "
                "0.125,0.15,0.175).",
            ),
        ] = False,
        point: Annotated[
            int | None,
            method_option("--point", help="With --grid: run only point K -> OUT.pointK.safetensors."),
        ] = None,
        collect: Annotated[
            bool, method_option("--collect", help="With --grid: keep the best point present as OUT.")
        ] = False,
        select_by: Annotated[
            SelectBy,
            method_option(
                "--select-by", help="Grid pick: accuracy (best val) or score (lowest within --tolerance)."
            ),
        ] = SelectBy.ACCURACY,
        tolerance: Annotated[
            float,
            method_option(
                "--tolerance", help="--select-by score: allowed val-accuracy drop (0.005 = 0.5 pt)."
            ),
        ] = 0.005,
        do_prune: Annotated[
            bool,
            method_option(
                "--do-prune",
                help="EC2T: entropy-controlled pruning (EC2T's --do-prune) of the squeeze-excite convs and "
                "the classifier, or of --layers: zero or the full-precision value; ternary layers stay.",
            ),
        ] = False,
        as_json: Json = False,
        *,
        train: TrainOptions,
    ) -> None:
        from mncli.stages.compression import other_rank
        from mncli.stages.ternarize import TernarizeConfig, run

        config = TernarizeConfig(
            method=method, variant=variant, threshold=threshold, scale_init=scale_init,
            layers=list(layers or []), include_depthwise=include_depthwise, retrain_epochs=retrain_epochs,
            scale_lr=scale_lr, latent_lr=latent_lr, centroid_lr=centroid_lr,
            ini_c=parse_list(ini_c, float, "--ini-c", "0.45") or [],
            lambda_div=parse_list(lambda_div, float, "--lambda-div", "0.125,0.15") or [],
            grid=grid, point=point, collect=collect, select_by=select_by, tolerance=tolerance,
            do_prune=do_prune,
        )  # fmt: skip
        result = run(inp, out, config, train)
        if other_rank(result):  # under torchrun rank 0 alone prints
            return
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
    prune = result.get("mode") == "prune"
    table = Table(title=f"ternarize ({result['method']}{', prune' if prune else ''}) -> {result['output']}")
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_row("val acc", fmt_pct(result["val_acc_before"]), fmt_pct(result["val_acc"]))
    table.add_row("test acc", fmt_pct(result["test_acc_before"]), fmt_pct(result["test_acc"]))
    table.add_row("score", fmt_num(result["score_before"]), fmt_num(result["score"]))
    if prune:
        table.add_row("pruned layers", "", str(result["pruned_layers"]))
        table.add_row("pruned sparsity", "", fmt_pct(result["pruned_sparsity"]))
        table.add_row("frozen layers", "", str(len(result["frozen_layers"])))
        table.add_row("file bytes", "", f"{result['file_bytes']:,}")
        return table
    table.add_row("ternary layers", "", str(result["ternary_layers"]))
    table.add_row("ternary sparsity", "", fmt_pct(result["ternary_sparsity"]))
    table.add_row(
        "ternary bytes (charged)", "", f"{result['ternary_bytes']:,} ({result['ternary_bytes_charged']:,.0f})"
    )
    table.add_row("file bytes", "", f"{result['file_bytes']:,}")
    return table
