"""`mncli score`: the MicroNet Challenge score of an artifact or of an architecture, per layer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mncli.cli import output
from mncli.cli.options import ArchName, ArchOpt, Json, method_option, train_option
from mncli.log import log
from mncli.stages.score import Accumulation, ScoreConfig, TernaryMults, TernaryStorage
from mncli.text import fmt_num, fmt_pct

HELP = "\n\n".join(
    [
        "Score a model by the MicroNet Challenge rules: params/params_baseline + ops/ops_baseline.",
        "Counts come from tracing the real model (every conv, linear, batch norm, activation, residual "
        "add, squeeze-excite gate and pooling) with each layer's real bits and measured sparsity; the bits "
        "a layer claims are checked against its values. Multiplications and additions are counted "
        "separately.",
        "An ONNX image classifier (.onnx, from any tool; needs the onnx extra: pip install 'mncli\\[onnx]') "
        "is counted from its graph by the same rules: ops from its nodes, bits from its "
        "QuantizeLinear/DequantizeLinear nodes and tensor types, sparsity from its weights. An op the "
        "rules do not know is refused by name. The dataset is the one an mncli export recorded, else "
        "--dataset (default: imagenet for 1000 classes at 128 px or more, else cifar100).",
        "Examples:",
        "  mncli score q.safetensors",
        "  mncli score model.onnx --dataset imagenet",
        "  mncli score q.safetensors --json | jq .score",
        "  mncli score --arch wrn-28-10 --dataset cifar100",
        "  mncli score --arch efficientnet-b0 --dataset imagenet --freebie16",
        "  mncli score --arch mbconv --arch-opt width_mult=0.5 --dataset cifar100",
    ]
)


def _fmt(value: float) -> str:
    """Three significant digits: 401k, 38.6G, 1.20M."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            scaled = value / size
            return f"{scaled:.3g}{unit}" if scaled < 100 else f"{scaled:.0f}{unit}"
    return f"{value:.3g}" if value != int(value) else f"{int(value)}"


def _bits(layer: dict) -> str:
    """Weight format / input activation bits of a layer with weights; input bits of other ops."""
    if layer["weight_format"] is None:
        return "-" if layer["act_bits"] is None else f"-/{layer['act_bits']}"
    return f"{layer['weight_format']}/{layer['act_bits']}"


def build_table(result: dict):
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    title = f"MicroNet score of {result['model']['name']} ({result['source']})"
    table = Table(
        title=title, box=box.SIMPLE_HEAD, header_style="bold", collapse_padding=True, pad_edge=False
    )
    table.add_column("layer", overflow="fold", min_width=16)
    for column in ("type", "output", "sparse", "w/a bits", "params", "mults", "adds"):
        justify = "left" if column in ("type", "output") else "right"
        table.add_column(column, justify=justify, no_wrap=True)
    for layer in result["layers"]:
        sparsity = layer["sparsity"]
        table.add_row(
            layer["name"],
            layer["type"],
            "x".join(str(s) for s in layer["shape"]),
            fmt_pct(sparsity),
            _bits(layer),
            _fmt(layer["params"]),
            _fmt(layer["mults"]),
            _fmt(layer["adds"]),
        )
    table.add_section()
    totals = (_fmt(result["params"]), _fmt(result["mults"]), _fmt(result["adds"]))
    table.add_row("total", "", "", "", "", *totals, style="bold")
    base = result["baseline"]
    lines = [
        f"task {result['task']['label']}, baseline {base['name']}: {_fmt(base['params'])} params, "
        f"{_fmt(base['ops'])} ops",
        f"params {result['params']:,.0f} ({result['storage_mb']:.3f} MB) "
        f"-> {fmt_num(result['params_score'])}",
        f"ops {result['ops']:,.0f} = {result['mults']:,.0f} mults + {result['adds']:,.0f} adds "
        f"-> {fmt_num(result['ops_score'])}",
    ]
    conv = result["conventions"]
    lines.append(
        f"conventions: {conv['params']}, adds at {conv['add_bits']} bits, ternary {conv['ternary_storage']}"
        f"/{conv['ternary_mults']}, accumulation {conv['accumulation']}"
        + (f" ({conv['tree_layers']} layers)" if conv["accumulation"] == "tree" else "")
    )
    lines += [f"claim: {claim}" for claim in result["claims"]]
    lines += [f"warning: {warning}" for warning in result["warnings"]]
    if not result["verified"]:
        lines.append("no weight values: counted dense, claims not verified")
    accuracy = result.get("accuracy")
    if accuracy and accuracy["target"] is None:
        lines.append(
            f"test top-1 {fmt_pct(accuracy['test_top1'] / 100)} (no accuracy target for this dataset)"
        )
    elif accuracy:
        verdict = "meets" if accuracy["meets_target"] else "misses"
        target = fmt_pct(accuracy["target"] / 100)
        lines.append(f"test top-1 {fmt_pct(accuracy['test_top1'] / 100)} {verdict} the {target} target")
    score_line = Text(f"score {fmt_num(result['score'])}", style="bold green")
    return Group(table, Text("\n".join(lines)), score_line)


Artifact = Annotated[
    Path | None,
    typer.Argument(
        metavar="INPUT", help="Artifact (.safetensors) or ONNX model (.onnx) to score.", show_default=False
    ),
]
Dataset = train_option(
    "dataset",
    "cifar100 or imagenet (fashion-mnist, mnist, cifar10 are scored against the cifar100 constants). "
    "Sets classes, channels and resolution with --arch. Default: the artifact's.",
)


ImageSize = train_option(
    "image_size",
    "Score an artifact at N px instead of its own resolution (networks with global pooling run at any "
    "size; EC2T scored its B1 at 256).",
)


def register(app: typer.Typer) -> None:
    @app.command("score", help=HELP, no_args_is_help=True)
    def score(
        artifact: Artifact = None,
        arch: ArchName = None,
        arch_opt: ArchOpt = None,
        dataset: Dataset = None,
        image_size: ImageSize = None,
        add_bits: Annotated[
            int,
            method_option(
                "--add-bits", help="Accumulator bits of additions; below 32 is reported as a claim."
            ),
        ] = 32,
        freebie16: Annotated[
            bool,
            method_option(
                "--freebie16", help="Count params and mults at 16 bits (refused if anything is below 16)."
            ),
        ] = False,
        ternary_storage: Annotated[
            TernaryStorage,
            method_option(
                "--ternary-storage",
                metavar="STORAGE",
                help="codes2 (the official convention: 2 bits per non-zero + a 1-bit mask), sign1 (EC2T's: "
                "1 sign bit per non-zero + the mask), each dense at 2 bits per code when that is smaller; or "
                "dense2 (MIT's: 2 bits per code dense whatever the zeros). Plus the two scales.",
            ),
        ] = TernaryStorage.CODES2,
        ternary_mults: Annotated[
            TernaryMults,
            method_option(
                "--ternary-mults",
                metavar="MODE",
                help="dense (official) or factorized (EC2T: 2 mults per output).",
            ),
        ] = TernaryMults.DENSE,
        infer: Annotated[
            bool,
            method_option("--infer", help="Derive weight bits/ternary structure from the values themselves."),
        ] = False,
        accumulation: Annotated[
            Accumulation,
            method_option(
                "--accumulation",
                metavar="MODE",
                help="flat (every add of a layer at its accumulator width) or tree (RL1's binary adder "
                "tree: each level's adds at the width `quantize --accumulator-tree` proved; layers "
                "without proved widths stay flat).",
            ),
        ] = Accumulation.FLAT,
        as_json: Json = False,
    ) -> None:
        from mncli.models import parse_arch_opts
        from mncli.scoring import summary
        from mncli.stages.score import run

        cfg = ScoreConfig(
            artifact=artifact,
            arch=arch,
            arch_opts=parse_arch_opts(arch_opt),
            dataset=dataset,
            add_bits=add_bits,
            freebie16=freebie16,
            ternary_storage=ternary_storage,
            ternary_mults=ternary_mults,
            infer=infer,
            accumulation=accumulation,
            image_size=image_size,
        )
        result = run(cfg)
        log(summary(result))
        output.emit(result, as_json=as_json, table=None if as_json else build_table(result))
