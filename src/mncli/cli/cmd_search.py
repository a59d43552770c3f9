"""`mncli search`: ProxylessNAS under a MicroNet cost target; writes an architecture-only artifact."""

from __future__ import annotations

from typing import Annotated

import typer

from mncli.cli import output
from mncli.cli.options import (
    BatchSize,
    DataDir,
    Dataset,
    Device,
    Download,
    Json,
    LearningRate,
    MaxStepsPerEpoch,
    Optimizer,
    OutputArtifact,
    Resume,
    Schedule,
    Seed,
    Subset,
    ValSize,
    WeightDecay,
)

HELP = (
    "Search an MBConv network for a dataset under a cost target (ProxylessNAS, cost-aware).\n\n"
    "The super-network has one choice block per searchable block: MBConv with kernel 3/5/7 x expansion "
    "3/6, plus `zero` (skip the block) where stride is 1 and the width does not change; --ops can add "
    "Fused-MBConv candidates (`fu_k3_e1`: one dense 3x3 conv, EfficientNetV2's early-stage block). "
    "Weights train on "
    "the training split with one sampled path per batch (random paths during --warmup-epochs); every "
    "--arch-every batches the architecture probabilities take one Adam step on a held-out validation "
    "batch through binary gates and the cost term (the expected MicroNet ops, params or score). The "
    "derived network (the most probable one whose cost lies in [0.8, 1] x target; with --argmax the "
    "most likely op per block) is written as an architecture-only artifact with the probabilities per "
    "block; train it from scratch with `mncli train`.\n\n"
    "Small images keep their resolution (stride-1 stem); ImageNet is searched at 224 px. Without a "
    "target the search aims at the middle (geometric mean) of the space's cost range. An impossible "
    "target (below the cheapest network of the space) is refused with that minimum.\n\n"
    "The defaults are the paper's, sized for a long ImageNet search. In a search of a few epochs they "
    "leave the super-network barely trained and the probabilities near uniform; the README's recipe "
    "adds --shared-weights, --arch-lr 0.01, --cost-loss add#linear and --act hswish (each measured "
    "there).\n\n"
    "Examples:\n\n"
    "  mncli search -d fashion-mnist --target-ops 5e6 -o arch.safetensors\n\n"
    "  mncli search -d fashion-mnist --target-ops 5e6 --shared-weights --warmup-epochs 1 --epochs 3 "
    "--arch-lr 0.01 --cost-loss add#linear --act hswish -o arch.safetensors\n\n"
    "  mncli train arch.safetensors -d fashion-mnist --epochs 20 -o fp.safetensors\n\n"
    "  mncli search -d cifar100 --target-params 1e6 --ops k3_e3,k5_e6,zero -o arch.safetensors\n\n"
    "  mncli search -d fashion-mnist --widths 16,32,64 --repeats 2,3,2 --strides 2,2,2 -o arch.safetensors"
)


def _ints(text: str | None, option: str) -> list[int] | None:
    from mncli.errors import BadInput

    if text is None:
        return None
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise BadInput(
            f"{option} takes comma-separated integers, got {text!r}", hint=f"e.g. {option} 16,32,64"
        ) from None


def register(app: typer.Typer) -> None:
    @app.command("search", help=HELP)
    def search(
        dataset: Dataset,
        out: OutputArtifact,
        target_ops: Annotated[
            float | None, typer.Option("--target-ops", help="Target MicroNet ops of the network.")
        ] = None,
        target_params: Annotated[
            float | None, typer.Option("--target-params", help="Target MicroNet parameters instead.")
        ] = None,
        target_score: Annotated[
            float | None, typer.Option("--target-score", help="Target MicroNet score instead.")
        ] = None,
        cost: Annotated[
            str | None,
            typer.Option("--cost", help="ops, params or score (default: the metric of the target given)."),
        ] = None,
        cost_loss: Annotated[
            str,
            typer.Option(
                "--cost-loss",
                help="mul#log: 0.2*CE*(log E[cost]/log target)^0.3; "
                "add#linear: CE + 0.1*(E[cost]-target)/target.",
            ),
        ] = "mul#log",
        fit_target: Annotated[
            bool,
            typer.Option(
                "--fit-target/--argmax",
                help="Derive the most probable network within [0.8, 1] x target, or keep the argmax one.",
            ),
        ] = True,
        widths: Annotated[
            str | None, typer.Option("--widths", help="Output channels per stage, e.g. 16,32,48,64.")
        ] = None,
        repeats: Annotated[
            str | None, typer.Option("--repeats", help="Choice blocks per stage, e.g. 2,3,3,2.")
        ] = None,
        strides: Annotated[
            str | None, typer.Option("--strides", help="Stride of each stage's first block.")
        ] = None,
        ops: Annotated[
            str | None,
            typer.Option(
                "--ops",
                help="Candidate ops: kK_eE (MBConv), fu_kK_eE (Fused-MBConv) and zero "
                "(default k3/5/7 x e3/6 and zero).",
            ),
        ] = None,
        stem_channels: Annotated[int | None, typer.Option("--stem-channels", help="Stem width.")] = None,
        stem_stride: Annotated[
            int | None,
            typer.Option(
                "--stem-stride", help="1 keeps small images at full resolution (default there), 2 halves it."
            ),
        ] = None,
        head_channels: Annotated[
            int | None, typer.Option("--head-channels", help="1x1 head conv width (0: none).")
        ] = None,
        se_ratio: Annotated[
            float,
            typer.Option(
                "--se-ratio",
                help="Squeeze-excite in every candidate block, at this fraction of its input channels "
                "(EfficientNet: 0.25; 0: none).",
            ),
        ] = 0.0,
        act: Annotated[
            str,
            typer.Option(
                "--act",
                help="Activation of the whole network (stem, candidates, head): relu6 (the paper's), relu, "
                "hswish (MobileNetV3) or swish (EfficientNet); hswish and swish cost 4 ops per element, "
                "relu6 1.",
            ),
        ] = "relu6",
        shared_weights: Annotated[
            bool,
            typer.Option(
                "--shared-weights",
                help="Candidates of a block share weights (kernel centre, first channels); ours, not the "
                "paper's: the super-network trains far better in a short search.",
            ),
        ] = False,
        warmup_epochs: Annotated[
            int, typer.Option("--warmup-epochs", help="Epochs of weights only, on random paths.")
        ] = 2,
        epochs: Annotated[int, typer.Option("--epochs", help="Search epochs after the warm-up.")] = 6,
        binary_mode: Annotated[
            str, typer.Option("--binary-mode", help="full (gate gradients of all paths) or two.")
        ] = "full",
        arch_lr: Annotated[float, typer.Option("--arch-lr", help="Adam learning rate of alpha.")] = 1e-3,
        arch_every: Annotated[
            int, typer.Option("--arch-every", help="One architecture step every k weight steps.")
        ] = 5,
        arch_steps: Annotated[int, typer.Option("--arch-steps", help="Architecture steps each time.")] = 1,
        batch_size: BatchSize = 128,
        lr: LearningRate = 0.05,
        optimizer: Optimizer = "sgd",
        weight_decay: WeightDecay = 4e-5,
        label_smoothing: Annotated[
            float, typer.Option("--label-smoothing", help="Of the weight steps.")
        ] = 0.1,
        schedule: Schedule = "cosine",
        max_steps: MaxStepsPerEpoch = None,
        augment: Annotated[
            str | None, typer.Option("--augment", help='default, none or e.g. "crop=4,flip".')
        ] = None,
        precision: Annotated[str, typer.Option("--precision", help="auto, fp32 or bf16.")] = "auto",
        resume: Resume = False,
        data_dir: DataDir = None,
        download: Download = False,
        subset: Subset = None,
        val_size: ValSize = None,
        seed: Seed = 0,
        device: Device = "auto",
        as_json: Json = False,
    ) -> None:
        from mncli.stages.search import SearchConfig, run

        cfg = SearchConfig(
            out=out, dataset=dataset, widths=_ints(widths, "--widths"), repeats=_ints(repeats, "--repeats"),
            strides=_ints(strides, "--strides"), ops=[o for o in ops.split(",") if o.strip()] or None
            if ops else None,
            stem_channels=stem_channels, stem_stride=stem_stride, head_channels=head_channels,
            se_ratio=se_ratio, act=act, cost=cost,
            target_ops=target_ops, target_params=target_params, target_score=target_score,
            cost_loss=cost_loss, fit_target=fit_target, shared_weights=shared_weights,
            binary_mode=binary_mode, arch_lr=arch_lr, arch_every=arch_every, arch_steps=arch_steps,
            warmup_epochs=warmup_epochs, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
            weight_decay=weight_decay, label_smoothing=label_smoothing, schedule=schedule,
            max_steps_per_epoch=max_steps, augment=augment, precision=precision, resume=resume,
            data_dir=data_dir, download=download, subset=subset,
            val_size=val_size, seed=seed, device=device,
        )  # fmt: skip
        result = run(cfg)
        output.emit(result, as_json=as_json, table=_table(result), out_path=str(out))


def _table(result: dict):
    from rich.table import Table

    from mncli.search.cost import fmt

    metric = result["cost"]
    table = Table(title=f"searched network -> {result['out']}")
    for column in ("block", "in -> out", "stride", "chosen", "p(chosen)", "runner-up", metric):
        table.add_column(column, justify="left" if column in ("chosen", "runner-up") else "right")
    for block in result["blocks"]:
        probs = block["probabilities"]
        ranked = sorted(probs, key=probs.get, reverse=True)
        runner = next((c for c in ranked if c != block["chosen"]), "-")
        table.add_row(
            str(block["block"]),
            f"{block['c_in']} -> {block['c_out']}",
            str(block["stride"]),
            block["chosen"] + (" (fitted)" if block["chosen"] != block["argmax"] else ""),
            f"{probs[block['chosen']]:.3f}",
            f"{runner} {probs.get(runner, 0):.3f}" if runner != "-" else "-",
            fmt(block["cost"], metric),
        )
    score = result["score"]
    acc = result.get("val_acc_shared_weights")
    table.caption = (
        f"{metric}: derived {fmt(result['derived_cost'], metric)}, target {fmt(result['target'], metric)}, "
        f"expected {fmt(result['expected_cost'], metric)} | params {score['params']:,.0f}, "
        f"ops {score['ops']:,.0f}, "
        f"score {score['score']:.6f} ({score['task']})"
        + (f" | val top-1 {100 * acc:.2f} % with shared weights" if acc is not None else "")
        + f" | {result['wall_time_s']:.0f} s"
    )
    return table
