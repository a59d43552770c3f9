"""`mncli quantize`: n-bit weights and activations per layer (LSQ/PACT/DoReFa QAT or PTQ), fp16, and
checked accumulator widths."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mncli.cli import output
from mncli.cli.options import (
    BatchSize,
    DataDir,
    Device,
    Download,
    GradClip,
    InputArtifact,
    InputDataset,
    Json,
    KdDistillWeight,
    KdTemperature,
    LabelSmoothing,
    LearningRate,
    Momentum,
    Optimizer,
    OutputArtifact,
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
from mncli.text import fmt_pct

HELP = """Quantize weights and input activations to n bits, layer by layer, and fine-tune (LSQ by default).

Bits are 2-8 (integer codes), 16 (half precision for real) or 32 (leave fp32). The first and the last
layer get 8 bits unless you ask for more. Depthwise weights get one scale per channel. Ternary layers
from `ternarize` keep their weights (only their inputs are quantized); pruned zeros stay zero. The
output holds packed integer codes and scales, and `mncli eval` runs exactly the quantized network.

--accumulator-bits N (below 32) is accepted only when an integer simulation on the validation split
shows that no layer's partial sums leave the signed N-bit range; otherwise the layer and the bits it
needs are reported and nothing is written.

Recipe keys (glob patterns over layer names): weight_bits, act_bits, per_channel, e.g.

  layers: {"classifier": {weight_bits: 6}, "layer3.*": {act_bits: 8}}

Examples:

  mncli quantize fp.safetensors -d fashion-mnist --weight-bits 4 --act-bits 4 -o q4.safetensors

  mncli quantize tern.safetensors -d fashion-mnist --act-bits 8 -o tq.safetensors

  mncli quantize fp.safetensors -d fashion-mnist --ptq --calibration percentile -w 8 -a 8 -o p8.safetensors

  mncli quantize fp.safetensors -d fashion-mnist -w 8 -a 8 --accumulator-bits 20 --fp16 -o q8.safetensors
"""

Bits = int


def register(app: typer.Typer) -> None:
    @app.command("quantize", help=HELP)
    def quantize(
        inp: InputArtifact,
        out: OutputArtifact,
        dataset: InputDataset = None,
        weight_bits: Annotated[
            Bits, typer.Option("--weight-bits", "-w", help="Weight bits: 2-8, 16, 32.")
        ] = 4,
        act_bits: Annotated[Bits, typer.Option("--act-bits", "-a", help="Activation bits: 2-8, 16, 32.")] = 4,
        first_last_bits: Annotated[
            Bits, typer.Option("--first-last-bits", help="Bits of the first and last layer (when lower).")
        ] = 8,
        method: Annotated[str, typer.Option("--method", "-m", help="lsq (default), pact or dorefa.")] = "lsq",
        ptq: Annotated[bool, typer.Option("--ptq", help="Post-training quantization: no training.")] = False,
        calibration: Annotated[
            str, typer.Option("--calibration", help="PTQ ranges: minmax or percentile.")
        ] = "minmax",
        percentile: Annotated[float, typer.Option("--percentile", help="Percentile of |x| for PTQ.")] = 99.99,
        calib_batches: Annotated[
            int, typer.Option("--calib-batches", help="Training batches for calibration and LSQ's init.")
        ] = 4,
        fp16: Annotated[
            bool, typer.Option("--fp16", help="Convert every layer left at 32 bits to half precision.")
        ] = False,
        accumulator_bits: Annotated[
            int, typer.Option("--accumulator-bits", help="Claim a narrower accumulator (checked).")
        ] = 32,
        accumulator_batches: Annotated[
            int | None, typer.Option("--accumulator-batches", help="Validation batches for that check.")
        ] = None,
        recipe: Recipe = None,
        epochs: Annotated[int, typer.Option("--epochs", help="Fine-tuning epochs (0: no training).")] = 3,
        batch_size: BatchSize = 128,
        optimizer: Optimizer = "sgd",
        lr: LearningRate = 0.01,
        momentum: Momentum = 0.9,
        schedule: Schedule = "cosine",
        warmup_epochs: WarmupEpochs = 0.0,
        weight_decay: WeightDecay = 1e-4,
        pact_decay: Annotated[
            float | None, typer.Option("--pact-decay", help="L2 on PACT's clip (default: --weight-decay).")
        ] = None,
        label_smoothing: LabelSmoothing = 0.0,
        grad_clip: GradClip = 0.0,
        augment: Annotated[
            str | None, typer.Option("--augment", help="default, none, or e.g. crop=4,flip,cutout=8.")
        ] = None,
        teacher: Teacher = None,
        kd_temperature: KdTemperature = 2.0,
        kd_student_weight: Annotated[float, typer.Option("--kd-student-weight", help="KD: CE weight.")] = 0.5,
        kd_distill_weight: KdDistillWeight = 0.5,
        val_size: ValSize = None,
        subset: Subset = None,
        data_dir: DataDir = None,
        download: Download = False,
        device: Device = "auto",
        precision: Annotated[
            str, typer.Option("--precision", help="Training autocast: auto, fp32, bf16 or fp16 (CUDA).")
        ] = "auto",
        seed: Seed = 0,
        resume: Resume = False,
        as_json: Json = False,
    ) -> None:
        from mncli.stages.evaluate import dataset_for_input
        from mncli.stages.quantize import QuantizeConfig, run
        from mncli.stages.train import TrainOptions

        train = TrainOptions(
            dataset=dataset_for_input(inp, dataset), data_dir=data_dir, download=download, subset=subset,
            val_size=val_size, epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
            momentum=momentum, schedule=schedule, warmup_epochs=warmup_epochs, weight_decay=weight_decay,
            label_smoothing=label_smoothing, grad_clip=grad_clip, augment=augment, teacher=teacher,
            kd_temperature=kd_temperature, kd_student_weight=kd_student_weight,
            kd_distill_weight=kd_distill_weight, device=device, precision=precision, seed=seed, out=out,
            resume=resume,
        )  # fmt: skip
        cfg = QuantizeConfig(
            input=inp, out=out, train=train, weight_bits=weight_bits, act_bits=act_bits,
            first_last_bits=first_last_bits, method=method, ptq=ptq, calibration=calibration,
            percentile=percentile, calib_batches=calib_batches, fp16=fp16, accumulator_bits=accumulator_bits,
            accumulator_batches=accumulator_batches, recipe=recipe, pact_decay=pact_decay,
        )  # fmt: skip
        result = run(cfg)
        output.emit(result, as_json=as_json, table=_table(result), out_path=str(out))


def _acc(row: dict) -> str:
    needed = row.get("acc_bits_needed")
    return f"{row['acc_bits']} (needs {needed})" if needed is not None else str(row["acc_bits"])


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
