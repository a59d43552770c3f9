"""`mncli prune`: AGP (options or a Distiller schedule), one-shot magnitude, a magnitude threshold,
reweighted L1, or structured channel removal."""

from __future__ import annotations

from typing import Annotated

import typer

from mncli.cli import output
from mncli.cli.options import (
    InputArtifact,
    Json,
    OutputArtifact,
    Recipe,
    method_option,
    training_options,
)
from mncli.stages.prune import Criterion, PruneMethod, Unit
from mncli.stages.training import TrainOptions
from mncli.text import fmt_num, fmt_pct, parse_list

HELP = "\n\n".join(
    [
        "Prune weights to a target sparsity (the fraction of weights that are zero) and fine-tune.",
        "Methods: agp (gradual), magnitude (one shot), reweighted-l1 (L1 penalty, then hard pruning) "
        "or threshold (--threshold T: every |w| < T becomes zero, no fine-tuning unless --epochs).",
        "--structured removes whole channels instead: smaller tensors, fewer parameters.",
        "The stem and the classifier stay dense unless --layers or a recipe names them (recipe key: "
        "sparsity, or channel_ratio). Zeros of an already pruned input stay zero.",
        "--recipe also reads a Distiller schedule YAML (version, pruners, lr_schedulers, policies) as "
        "Distiller runs it: each AutomatedGradualPruner with its own sparsities and epochs, and the "
        "ExponentialLR/StepLR/MultiStepLR policies; --epochs defaults to its last ending_epoch.",
        "Examples:",
        "  mncli prune fp.safetensors -d fashion-mnist -s 0.8 -o p80.safetensors",
        "  mncli prune fp.safetensors -s 0.8 --epochs 10 --end 6 -o p80.safetensors",
        "  mncli prune fp.safetensors -m magnitude -s 0.7 --global -o m70.safetensors",
        "  mncli prune fp.safetensors -m reweighted-l1 --recipe r.yaml -o r.safetensors",
        "  mncli prune b1.safetensors --recipe pruning2.yaml -d imagenet -o agp.safetensors",
        "  mncli prune ec2t.safetensors --threshold 0.01 -o t.safetensors",
        "  mncli prune fp.safetensors --structured --channel-ratio 0.25 -o slim.safetensors",
    ]
)


def register(app: typer.Typer) -> None:
    @app.command("prune", help=HELP)
    @training_options(
        epochs=None, lr=None, optimizer=None, weight_decay=None, batch_size=None, schedule=None,
        help_epochs="Training epochs (default: agp 40, magnitude 20, reweighted-l1 300, structured 20, "
        "threshold 0; a Distiller schedule: its last ending_epoch).",
        help_lr="Peak learning rate (default 0.01; reweighted-l1 1e-3).",
        help_optimizer="sgd (nesterov), adam or adamw (default sgd; reweighted-l1 adam).",
        help_weight_decay="Weight decay (default 1e-4; reweighted-l1 0).",
        help_batch_size="Batch size per process (default 128; reweighted-l1 64).",
        help_schedule="cosine, onecycle, step, exp or constant (default cosine; reweighted-l1 exp x0.98; "
        "a Distiller schedule: constant, changed only by its LR policies).",
    )  # fmt: skip
    def prune(
        inp: InputArtifact,
        out: OutputArtifact,
        method: Annotated[
            PruneMethod,
            method_option(
                "--method", "-m", metavar="METHOD", help="agp, magnitude, reweighted-l1 or threshold."
            ),
        ] = PruneMethod.AGP,
        sparsity: Annotated[
            float | None, method_option("--sparsity", "-s", help="Final fraction of zero weights, in [0, 1).")
        ] = None,
        threshold: Annotated[
            float | None,
            method_option("--threshold", help="Threshold method: zero every weight with |w| below this."),
        ] = None,
        relative_threshold: Annotated[
            bool,
            method_option(
                "--relative-threshold",
                help="Threshold method: --threshold is a fraction of each layer's max |w| (EC2T's).",
            ),
        ] = False,
        global_threshold: Annotated[
            bool, method_option("--global", help="agp, magnitude: one threshold over all layers.")
        ] = False,
        layers: Annotated[
            list[str] | None,
            method_option("--layers", help="Layers to prune, a glob (repeatable; '!pat' excludes)."),
        ] = None,
        exclude_depthwise: Annotated[
            bool,
            method_option("--exclude-depthwise", help="Leave depthwise convs dense (pruned by default)."),
        ] = False,
        recipe: Recipe = None,
        initial_sparsity: Annotated[
            float, method_option("--initial-sparsity", help="AGP: sparsity of the first pruning step.")
        ] = 0.05,
        start: Annotated[int, method_option("--start", help="AGP: first pruning epoch (or step).")] = 0,
        end: Annotated[
            int | None,
            method_option(
                "--end", help="AGP: pruning stops before this epoch/step (default: half the epochs)."
            ),
        ] = None,
        freq: Annotated[
            int | None,
            method_option("--freq", help="AGP: prune every N epochs/steps (default 2 epochs, 100 steps)."),
        ] = None,
        unit: Annotated[
            Unit,
            method_option(
                "--unit", metavar="UNIT", help="AGP: epochs or steps, the unit of --start/--end/--freq."
            ),
        ] = Unit.EPOCHS,
        rl1_lambda: Annotated[
            float | None, method_option("--rl1-lambda", help="Reweighted L1: penalty weight (default 1e-6).")
        ] = None,
        rl1_eps: Annotated[
            float | None, method_option("--rl1-eps", help="Reweighted L1: eps in 1/(|W|+eps) (default 1e-3).")
        ] = None,
        reweight_at: Annotated[
            str | None,
            method_option(
                "--reweight-at",
                help="Reweighted L1: epochs to recompute the weights, e.g. 8,16 "
                "(default: at 20/40/60/80 % of the epochs).",
            ),
        ] = None,
        lr_boost: Annotated[
            float | None,
            method_option(
                "--lr-boost", help="Reweighted L1: LR factor at each reweighting (default 1.6, the seed's)."
            ),
        ] = None,
        retrain_epochs: Annotated[
            int | None,
            method_option(
                "--retrain-epochs", help="Reweighted L1: masked retraining epochs (default: --epochs)."
            ),
        ] = None,
        structured: Annotated[
            bool, method_option("--structured", help="Remove whole channels instead of masking weights.")
        ] = False,
        channel_ratio: Annotated[
            float | None,
            method_option("--channel-ratio", help="Structured: fraction of each group's channels removed."),
        ] = None,
        criterion: Annotated[
            Criterion,
            method_option(
                "--criterion",
                metavar="NAME",
                help="Structured: l1 (smallest norms) or zero (all-zero channels).",
            ),
        ] = Criterion.L1,
        as_json: Json = False,
        *,
        train: TrainOptions,
    ) -> None:
        from mncli.stages.compression import other_rank
        from mncli.stages.prune import PruneConfig, run

        config = PruneConfig(
            method=method, sparsity=sparsity, initial_sparsity=initial_sparsity, start=start, end=end,
            freq=freq, unit=unit, global_threshold=global_threshold, structured=structured,
            channel_ratio=channel_ratio, criterion=criterion, recipe=recipe, layers=list(layers or []),
            include_depthwise=not exclude_depthwise, rl1_lambda=rl1_lambda, rl1_eps=rl1_eps,
            reweight_at=parse_list(reweight_at, int, "--reweight-at", "8,16"), lr_boost=lr_boost,
            retrain_epochs=retrain_epochs, threshold=threshold, relative_threshold=relative_threshold,
        )  # fmt: skip
        result = run(inp, out, config, train)
        if other_rank(result):  # under torchrun rank 0 alone prints
            return
        output.emit(result, as_json=as_json, table=_table(result), out_path=str(out))


def _table(result: dict):
    from rich.table import Table

    table = Table(title=f"prune ({result['method']}) -> {result['output']}")
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_row("val accuracy", fmt_pct(result.get("val_acc_before")), fmt_pct(result.get("val_acc")))
    table.add_row("test accuracy", fmt_pct(result.get("test_acc_before")), fmt_pct(result.get("test_acc")))
    table.add_row("score", fmt_num(result.get("score_before")), fmt_num(result.get("score")))
    if "params_after" in result:
        table.add_row("parameters", fmt_num(result["params_before"]), fmt_num(result["params_after"]))
    else:
        table.add_row(
            f"sparsity (target {fmt_pct(result.get('target'))})",
            "",
            fmt_pct(result.get("achieved")),
        )
        for name, row in result.get("layers", {}).items():
            table.add_row(
                f"  {name} (target {fmt_pct(row['target'])})",
                fmt_pct(row["before"]),
                fmt_pct(row["achieved"]),
            )
    if result.get("file_bytes") is not None:
        before = f"{result['input_bytes']:,} bytes" if result.get("input_bytes") else ""
        table.add_row("file size", before, f"{result['file_bytes']:,} bytes")
    return table
