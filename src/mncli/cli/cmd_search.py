"""`mncli search`: ProxylessNAS under a MicroNet cost target; writes an architecture-only artifact."""

from __future__ import annotations

from typing import Annotated

import typer

from mncli.cli import output
from mncli.cli.options import Json, OutputArtifact, method_option, training_options
from mncli.stages.search import TRAIN_DEFAULTS, Activation, BinaryMode, Cost, CostLoss, SpaceName
from mncli.stages.training import TrainOptions
from mncli.text import parse_list

HELP = "\n\n".join(
    [
        "Search an MBConv network for a dataset under a cost target (ProxylessNAS, cost-aware).",
        "The super-network has one choice block per searchable block: MBConv with kernel 3/5/7 x "
        "expansion 3/6, plus `zero` (skip the block) where stride is 1 and the width does not change; "
        "--ops can add Fused-MBConv candidates. Weights train with one sampled path per batch (random "
        "paths during --weights-warmup-epochs); every --arch-every batches the architecture "
        "probabilities take an Adam step on a validation batch through binary gates and the cost term "
        "(the expected MicroNet ops, params or score). The derived network (the most probable one whose "
        "cost lies in [0.8, 1] x target; with --argmax the most likely op per block) is written as an "
        "architecture-only artifact with the probabilities per block; train it from scratch with "
        "`mncli train`.",
        "Small images keep their resolution (stride-1 stem); ImageNet is searched at 224 px. Without a "
        "target the search aims at the middle (geometric mean) of the space's cost range; a target below "
        "the cheapest network of the space is refused with that minimum.",
        "The defaults are the paper's, sized for a long ImageNet search; for a search of a few epochs the "
        "README's recipe adds --shared-weights, --arch-lr 0.01, --cost-loss add#linear and --act hswish.",
        "Examples:",
        "  mncli search -d fashion-mnist --target-ops 5e6 -o arch.safetensors",
        "  mncli search -d fashion-mnist --target-ops 5e6 --shared-weights --weights-warmup-epochs 1 "
        "--epochs 3 --arch-lr 0.01 --cost-loss add#linear --act hswish -o arch.safetensors",
        "  mncli train arch.safetensors -d fashion-mnist --epochs 20 -o fp.safetensors",
        "  mncli search -d cifar100 --target-params 1e6 --ops k3_e3,k5_e6,zero -o arch.safetensors",
        "  mncli search -d fashion-mnist --widths 16,32,64 --repeats 2,3,2 --strides 2,2,2 "
        "-o arch.safetensors",
        "  mncli search -d cifar100 --space mit-cifar100 --target-params 5.77e6 -o arch.safetensors",
    ]
)


def register(app: typer.Typer) -> None:
    @app.command("search", help=HELP)
    @training_options(
        **TRAIN_DEFAULTS,
        help_epochs="Search epochs, after the weights warm-up.",
        help_label_smoothing="Label smoothing of the weight steps.",
    )
    def search(
        out: OutputArtifact,
        train: TrainOptions,
        target_ops: Annotated[
            float | None, method_option("--target-ops", help="Target MicroNet ops of the network.")
        ] = None,
        target_params: Annotated[
            float | None, method_option("--target-params", help="Target MicroNet parameters instead.")
        ] = None,
        target_score: Annotated[
            float | None, method_option("--target-score", help="Target MicroNet score instead.")
        ] = None,
        cost: Annotated[
            Cost | None,
            method_option(
                "--cost",
                metavar="COST",
                help="ops, params or score (default: the metric of the target given).",
            ),
        ] = None,
        cost_loss: Annotated[
            CostLoss,
            method_option(
                "--cost-loss",
                metavar="LOSS",
                help="mul#log: 0.2 * CE * (log E\\[cost] / log target)^0.3; "
                "add#linear: CE + 0.1 * (E\\[cost] - target) / target.",
            ),
        ] = CostLoss.MUL_LOG,
        argmax: Annotated[
            bool,
            method_option(
                "--argmax",
                help="Keep the most likely op per block, instead of the most probable network within "
                "[0.8, 1] x target.",
            ),
        ] = False,
        space: Annotated[
            SpaceName | None,
            method_option(
                "--space",
                metavar="SPACE",
                help="A named layout instead of the dataset's: mit-cifar100 (ProxylessNAS's mobile "
                "super-network at width 1.4 on a CIFAR stem, 1.9M-7.5M parameters: room for the MIT "
                "seed's 5.77M network), e.g. --space mit-cifar100. --widths, --repeats, ... override it.",
            ),
        ] = None,
        widths: Annotated[
            str | None, method_option("--widths", help="Output channels per stage, e.g. 16,32,48,64.")
        ] = None,
        repeats: Annotated[
            str | None, method_option("--repeats", help="Choice blocks per stage, e.g. 2,3,3,2.")
        ] = None,
        strides: Annotated[
            str | None, method_option("--strides", help="Stride of each stage's first block.")
        ] = None,
        ops: Annotated[
            str | None,
            method_option(
                "--ops",
                help="Candidate ops: kK_eE (MBConv), fu_kK_eE (Fused-MBConv, e.g. fu_k3_e1: one dense 3x3 "
                "conv) and zero (default k3/5/7 x e3/6 and zero).",
            ),
        ] = None,
        stem_channels: Annotated[int | None, method_option("--stem-channels", help="Stem width.")] = None,
        stem_stride: Annotated[
            int | None,
            method_option(
                "--stem-stride", help="1 keeps small images at full resolution (default there), 2 halves it."
            ),
        ] = None,
        head_channels: Annotated[
            int | None, method_option("--head-channels", help="1x1 head conv width (0: none).")
        ] = None,
        se_ratio: Annotated[
            float,
            method_option(
                "--se-ratio",
                help="Squeeze-excite in every candidate block, at this fraction of its input channels "
                "(EfficientNet: 0.25; 0: none).",
            ),
        ] = 0.0,
        act: Annotated[
            Activation,
            method_option(
                "--act",
                case_sensitive=False,
                metavar="ACT",
                help="Activation of the whole network (stem, candidates, head): relu6 (the paper's), relu, "
                "hswish (MobileNetV3) or swish (EfficientNet), also hardswish, silu, tanh; hswish and swish "
                "cost 4 ops per element, relu6 1.",
            ),
        ] = Activation.RELU6,
        shared_weights: Annotated[
            bool,
            method_option(
                "--shared-weights",
                help="Candidates of a block share weights (kernel centre, first channels); ours, not the "
                "paper's: the super-network trains far better in a short search.",
            ),
        ] = False,
        weights_warmup_epochs: Annotated[
            int,
            method_option(
                "--weights-warmup-epochs",
                help="Epochs of weight steps only, on random paths, before the search epochs.",
            ),
        ] = 2,
        binary_mode: Annotated[
            BinaryMode, method_option("--binary-mode", help="full (gate gradients of all paths) or two.")
        ] = BinaryMode.FULL,
        arch_lr: Annotated[float, method_option("--arch-lr", help="Adam learning rate of alpha.")] = 1e-3,
        arch_every: Annotated[
            int, method_option("--arch-every", help="One architecture step every k weight steps.")
        ] = 5,
        arch_steps: Annotated[int, method_option("--arch-steps", help="Architecture steps each time.")] = 1,
        as_json: Json = False,
    ) -> None:
        from mncli.stages.search import SearchConfig, run

        config = SearchConfig(
            space=space,
            widths=parse_list(widths, int, "--widths", "16,32,48,64"),
            repeats=parse_list(repeats, int, "--repeats", "2,3,3,2"),
            strides=parse_list(strides, int, "--strides", "2,2,2,1"),
            ops=parse_list(ops, str, "--ops", "k3_e3,k5_e6,zero") or None,
            stem_channels=stem_channels, stem_stride=stem_stride, head_channels=head_channels,
            se_ratio=se_ratio, act=act, cost=cost, target_ops=target_ops, target_params=target_params,
            target_score=target_score, cost_loss=cost_loss, fit_target=not argmax,
            shared_weights=shared_weights, binary_mode=binary_mode, arch_lr=arch_lr, arch_every=arch_every,
            arch_steps=arch_steps, weights_warmup_epochs=weights_warmup_epochs,
        )  # fmt: skip
        result = run(out, config, train)
        if "output" not in result:  # a DDP rank other than 0: rank 0 prints
            return
        output.emit(result, as_json=as_json, table=_table(result), out_path=result["output"])


def _table(result: dict):
    from rich.table import Table

    from mncli.search.cost import fmt

    metric = result["cost"]
    table = Table(title=f"searched network -> {result['output']}")
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
