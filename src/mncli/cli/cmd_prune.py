"""`mncli prune`: AGP, one-shot magnitude, reweighted L1, or structured channel removal."""

from __future__ import annotations

from typing import Annotated

import typer

from mncli.cli import output
from mncli.cli.options import (
    Augment,
    BatchSize,
    DataDir,
    Device,
    Download,
    GradClip,
    InputArtifact,
    InputDataset,
    Json,
    KdDistillWeight,
    KdStudentWeight,
    KdTemperature,
    LabelSmoothing,
    Momentum,
    OutputArtifact,
    Precision,
    Recipe,
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
from mncli.text import fmt_num, fmt_pct

HELP = """Prune weights to a target sparsity (the fraction of weights that are zero) and fine-tune.

Methods: agp (gradual, cubic schedule from --initial-sparsity to --sparsity between --start and --end,
every --freq epochs or steps, then fine-tuning), magnitude (one shot, per layer or --global, then
fine-tuning), reweighted-l1 (training with an L1 penalty reweighted by 1/(|W|+eps), then hard pruning and
retraining from a fresh optimiser). Masks are re-applied after every optimiser step, so pruned weights
never come back, and every layer reaches its target to the weight. The stem and the classifier are left
dense unless --layers or a recipe names them. Zeros of an already pruned input stay zero.

--structured removes whole channels instead (--channel-ratio of each prunable group, by L1 norm, or the
all-zero ones with --criterion zero): the output holds smaller tensors and really has fewer parameters.
Channels a residual shortcut carries are removed only when every member of the residual group has them
at zero.

The output stores pruned tensors as a 1-bit mask plus the surviving values, so the file shrinks.
Recipe keys: sparsity (or channel_ratio with --structured), e.g.

  layers: {"layer1.*": {sparsity: 0.5}, "layer3.*.conv2": {sparsity: 0.9}, "fc": {sparsity: 0.3}}

Examples:

  mncli prune fp.safetensors -d fashion-mnist --method agp --sparsity 0.8 -o p80.safetensors

  mncli prune fp.safetensors -d fashion-mnist -m agp -s 0.8 --epochs 10 --end 6 --freq 1 -o p.safetensors

  mncli prune fp.safetensors -d fashion-mnist --method magnitude --sparsity 0.7 --global -o m70.safetensors

  mncli prune fp.safetensors -d cifar100 --method reweighted-l1 --recipe targets.yaml -o rl1.safetensors

  mncli prune fp.safetensors -d cifar10 --structured --channel-ratio 0.25 -o slim.safetensors
"""


def _int_list(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise BadInput(
            f"--reweight-at needs comma-separated epochs, got {text!r}", hint="e.g. 60,120,180"
        ) from None


def register(app: typer.Typer) -> None:
    @app.command("prune", help=HELP)
    def prune(
        inp: InputArtifact,
        out: OutputArtifact,
        dataset: InputDataset = None,
        method: Annotated[
            str, typer.Option("--method", "-m", help="agp, magnitude or reweighted-l1.")
        ] = "agp",
        sparsity: Annotated[
            float | None, typer.Option("--sparsity", "-s", help="Final fraction of zero weights, in [0, 1).")
        ] = None,
        initial_sparsity: Annotated[
            float, typer.Option("--initial-sparsity", help="AGP: sparsity of the first pruning step.")
        ] = 0.05,
        start: Annotated[int, typer.Option("--start", help="AGP: first pruning epoch (or step).")] = 0,
        end: Annotated[
            int | None,
            typer.Option(
                "--end", help="AGP: pruning stops before this epoch/step (default: half the epochs)."
            ),
        ] = None,
        freq: Annotated[
            int | None,
            typer.Option("--freq", help="AGP: prune every N epochs/steps (default 2 epochs, 100 steps)."),
        ] = None,
        unit: Annotated[
            str, typer.Option("--unit", help="AGP: unit of --start/--end/--freq: epochs or steps.")
        ] = "epochs",
        global_threshold: Annotated[
            bool, typer.Option("--global", help="One magnitude threshold over all layers (agp, magnitude).")
        ] = False,
        layers: Annotated[
            list[str] | None,
            typer.Option("--layers", help="Glob pattern of layers to prune (repeatable; '!pat' excludes)."),
        ] = None,
        include_depthwise: Annotated[
            bool, typer.Option("--include-depthwise/--exclude-depthwise", help="Prune depthwise convs too.")
        ] = True,
        recipe: Recipe = None,
        structured: Annotated[bool, typer.Option("--structured", help="Remove whole channels.")] = False,
        channel_ratio: Annotated[
            float | None, typer.Option("--channel-ratio", help="Structured: fraction of channels removed.")
        ] = None,
        criterion: Annotated[
            str,
            typer.Option("--criterion", help="Structured: l1 (smallest norms) or zero (all-zero channels)."),
        ] = "l1",
        rl1_lambda: Annotated[
            float, typer.Option("--rl1-lambda", help="Reweighted L1: penalty weight.")
        ] = 1e-6,
        rl1_eps: Annotated[
            float, typer.Option("--rl1-eps", help="Reweighted L1: eps in 1/(|W|+eps).")
        ] = 1e-3,
        reweight_at: Annotated[
            str | None,
            typer.Option(
                "--reweight-at", help="Reweighted L1: epochs to recompute R (default 20/40/60/80 %)."
            ),
        ] = None,
        lr_boost: Annotated[
            float,
            typer.Option("--lr-boost", help="Reweighted L1: LR factor at each reweighting (seed: 1.6)."),
        ] = 1.0,
        retrain_epochs: Annotated[
            int | None, typer.Option("--retrain-epochs", help="Reweighted L1: masked retraining epochs.")
        ] = None,
        epochs: Annotated[
            int | None,
            typer.Option(
                "--epochs", help="Training epochs (default: agp 40, magnitude 20, rl1 40, structured 20)."
            ),
        ] = None,
        batch_size: BatchSize = 128,
        lr: Annotated[
            float | None, typer.Option("--lr", help="Peak learning rate (default 0.01; reweighted-l1: 1e-3).")
        ] = None,
        optimizer: Annotated[
            str | None,
            typer.Option("--optimizer", help="sgd, adam or adamw (default sgd; reweighted-l1 adam)."),
        ] = None,
        momentum: Momentum = 0.9,
        schedule: Schedule = "cosine",
        warmup_epochs: WarmupEpochs = 0.0,
        weight_decay: WeightDecay = 1e-4,
        label_smoothing: LabelSmoothing = 0.0,
        grad_clip: GradClip = 0.0,
        augment: Augment = None,
        teacher: Teacher = None,
        kd_temperature: KdTemperature = 2.0,
        kd_student_weight: KdStudentWeight = 0.5,
        kd_distill_weight: KdDistillWeight = 0.5,
        resume: Resume = False,
        data_dir: DataDir = None,
        download: Download = False,
        subset: Subset = None,
        val_size: ValSize = None,
        precision: Precision = "auto",
        seed: Seed = 0,
        device: Device = "auto",
        as_json: Json = False,
    ) -> None:
        from mncli.stages.evaluate import dataset_for_input
        from mncli.stages.prune import PruneConfig, run
        from mncli.stages.train import TrainOptions

        options = TrainOptions(
            dataset=dataset_for_input(inp, dataset), data_dir=data_dir, download=download, subset=subset,
            val_size=val_size, batch_size=batch_size, momentum=momentum, schedule=schedule,
            warmup_epochs=warmup_epochs, weight_decay=weight_decay, label_smoothing=label_smoothing,
            grad_clip=grad_clip, augment=augment,
            teacher=teacher, kd_temperature=kd_temperature, kd_student_weight=kd_student_weight,
            kd_distill_weight=kd_distill_weight, device=device, precision=precision, seed=seed, out=out,
            resume=resume,
        )  # fmt: skip
        cfg = PruneConfig(
            input=inp, out=out, train=options, method=method, sparsity=sparsity,
            initial_sparsity=initial_sparsity, start=start, end=end, freq=freq, unit=unit,
            global_threshold=global_threshold, structured=structured, channel_ratio=channel_ratio,
            criterion=criterion, recipe=recipe, layers=list(layers or []),
            include_depthwise=include_depthwise, rl1_lambda=rl1_lambda, rl1_eps=rl1_eps,
            reweight_at=_int_list(reweight_at), lr_boost=lr_boost, retrain_epochs=retrain_epochs,
            epochs=epochs, lr=lr, optimizer=optimizer,
        )  # fmt: skip
        result = run(cfg)
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
