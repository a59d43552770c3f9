"""`mncli quantize`: n-bit weights and activations per layer (LSQ/PACT/DoReFa QAT or PTQ), fp16, and
checked accumulator widths (one claim, or a width per adder-tree level)."""

from __future__ import annotations

from pathlib import Path
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
from mncli.stages.compression import other_rank
from mncli.stages.quantize import Calibration, QuantizeConfig, QuantizeMethod, run
from mncli.stages.training import TrainOptions
from mncli.text import fmt_pct

HELP = """Quantize weights and input activations to n bits, layer by layer, and fine-tune (LSQ by default).

Bits are 2-8 (integer codes), 16 (half precision for real) or 32 (leave fp32); the first and the last layer get 8 bits unless you ask for more. Weights may have fractional bits between 2 and 8, as Distiller's linear quantizers took (its ImageNet entry's last FC at 2.5): a uniform grid of floor(2**b) codes (2.5 bits: 5 levels, -2..2), stored packed (3 codes in 7 bits) and scored at those packed bits. Activation bits are whole. Ternary layers (from `ternarize`, or recognised by `import`) keep their weights (only their inputs are quantized), so do int layers given no new integer bits: --fp16 never turns them into fp16 values. Pruned zeros stay zero. `mncli eval` of the output runs exactly the quantized network.

LSQ's step sizes start where its paper puts them (2 * mean|x| / sqrt(Q_P), sized for 2-4 bits); --calibration minmax (or percentile) starts them at the ranges PTQ would calibrate instead, so the network starts as the PTQ one: better at 8 bits, where the paper's start clips the tails.

--accumulator-tree proves the width of each level of a binary adder tree (the products added in pairs, the pairs in pairs, ...) by integer simulation on the validation split and records it in the layer specs (acc_tree), for `mncli score --accumulation tree`.

Recipe keys (glob patterns over layer names): weight_bits, act_bits, per_channel, e.g. layers: {"classifier": {weight_bits: 2.5}, "layer3.*": {act_bits: 8}}

Examples:

  mncli quantize fp.safetensors -d fashion-mnist --weight-bits 4 --act-bits 4 -o q4.safetensors

  mncli quantize tern.safetensors -d fashion-mnist --act-bits 8 -o tq.safetensors

  mncli quantize fp.safetensors -d fashion-mnist --ptq --calibration percentile -w 8 -a 8 -o p8.safetensors

  mncli quantize fp.safetensors -d fashion-mnist -w 8 -a 8 --accumulator-bits 20 --fp16 -o q8.safetensors

  mncli quantize tern.safetensors -d fashion-mnist -w 8 -a 8 --calibration minmax -o tq8.safetensors

  mncli quantize fp.safetensors -d fashion-mnist -w 6 -a 6 --accumulator-tree -o q6.safetensors
"""  # noqa: E501 - one source line per paragraph; the terminal wraps it


def register(app: typer.Typer) -> None:
    @app.command("quantize", help=HELP)
    @training_options(
        epochs=3, lr=0.01, weight_decay=1e-4, help_epochs="Fine-tuning epochs (0: no training)."
    )
    def quantize(
        inp: InputArtifact,
        out: OutputArtifact,
        train: TrainOptions,
        weight_bits: Annotated[
            float,
            method_option(
                "--weight-bits",
                "-w",
                help="Weight bits: 2-8, 16, 32; or fractional between 2 and 8 (2.5: 5 levels).",
            ),
        ] = 4,
        act_bits: Annotated[int, method_option("--act-bits", "-a", help="Activation bits: 2-8, 16, 32.")] = 4,
        first_last_bits: Annotated[
            int, method_option("--first-last-bits", help="Bits of the first and last layer (when lower).")
        ] = 8,
        method: Annotated[
            QuantizeMethod, method_option("--method", "-m", help="Quantization-aware training method.")
        ] = QuantizeMethod.LSQ,
        ptq: Annotated[bool, method_option("--ptq", help="Post-training quantization: no training.")] = False,
        calibration: Annotated[
            Calibration | None,
            method_option(
                "--calibration",
                help="PTQ ranges (default minmax); LSQ: start the step sizes there (not the paper's init).",
            ),
        ] = None,
        percentile: Annotated[
            float, method_option("--percentile", help="Percentile of |x| for --calibration percentile.")
        ] = 99.99,
        calib_batches: Annotated[
            int, method_option("--calib-batches", help="Training batches for calibration and LSQ's init.")
        ] = 4,
        fp16: Annotated[
            bool, method_option("--fp16", help="Convert every layer left at 32 bits to half precision.")
        ] = False,
        accumulator_bits: Annotated[
            int,
            method_option(
                "--accumulator-bits",
                help="Claim a narrower accumulator: accepted only when an integer simulation on the "
                "validation split shows that no layer's partial sums leave the signed N-bit range; "
                "otherwise the layer and the bits it needs are reported and nothing is written.",
            ),
        ] = 32,
        accumulator_batches: Annotated[
            int | None,
            method_option(
                "--accumulator-batches",
                help="Validation batches for the accumulator checks (default: all).",
            ),
        ] = None,
        accumulator_tree: Annotated[
            bool,
            method_option(
                "--accumulator-tree",
                help="Prove by integer simulation on the validation split the signed bits each level of "
                "a binary adder tree needs, per integer layer (spec acc_tree).",
            ),
        ] = False,
        pact_decay: Annotated[
            float | None, method_option("--pact-decay", help="L2 on PACT's clip (default: --weight-decay).")
        ] = None,
        recipe: Recipe = None,
        as_json: Json = False,
    ) -> None:
        config = QuantizeConfig(
            weight_bits=weight_bits, act_bits=act_bits, first_last_bits=first_last_bits, method=method,
            ptq=ptq, calibration=calibration, percentile=percentile, calib_batches=calib_batches,
            fp16=fp16, accumulator_bits=accumulator_bits, accumulator_batches=accumulator_batches,
            accumulator_tree=accumulator_tree, recipe=recipe, pact_decay=pact_decay,
        )  # fmt: skip
        result = run(inp, out, config, train)
        if other_rank(result):  # under torchrun rank 0 alone prints
            return
        output.emit(result, as_json=as_json, table=_table(result), out_path=result["output"])


def _acc(row: dict) -> str:
    needed, tree = row.get("acc_bits_needed"), row.get("acc_tree")
    text = f"{row['acc_bits']} (needs {needed})" if needed is not None else str(row["acc_bits"])
    return f"{text}, tree {'/'.join(map(str, tree))}" if tree else text


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.6f}"


def _table(result: dict):
    from rich.table import Table

    table = Table(title=f"quantized -> {Path(result['output']).name} ({result['method']})")
    for column in ("layer", "weight", "levels", "act bits", "signed", "acc bits"):
        table.add_column(column, justify="left" if column in ("layer", "weight") else "right")
    for row in result["layers"]:
        signed = "-" if row["act_signed"] is None else ("yes" if row["act_signed"] else "no")
        table.add_row(
            row["layer"],
            row["weight"],
            str(row["levels"]),
            str(row["act_bits"]),
            signed,
            _acc(row),
        )
    table.caption = (
        f"test top-1 {fmt_pct(result['test_acc_before'])} -> {fmt_pct(result['test_acc'])}, "
        f"val top-1 {fmt_pct(result['val_acc_before'])} -> {fmt_pct(result['val_acc'])}"
        + (f", score {_score(result['score_before'])} -> {_score(result['score'])}")
    )
    return table
