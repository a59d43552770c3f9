"""`mncli export`: an artifact's model for plain PyTorch or for ONNX runtimes (the stage does the work)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mncli.cli import output
from mncli.cli.options import OUTPUT, InputArtifact, Json, method_option
from mncli.stages.export import DEFAULT_OPSET, INT2_OPSET, ExportFormat
from mncli.text import fmt_num

HELP = "\n\n".join(
    [
        "Export an artifact's model for plain PyTorch or for ONNX runtimes.",
        "The PyTorch forms hold its real values (pruned zeros, ternary and n-bit weights decoded to floats); "
        "the programs (torchscript, torch-export) run without mncli at the model's native input size, "
        "with any batch size.",
        "ONNX (--format onnx, needs the onnx extra: pip install 'mncli\\[onnx]') keeps each layer as the "
        "artifact has it: fp32 and fp16 weights as such, n-bit weights as INT8 / INT4 / INT2 codes "
        "through DequantizeLinear with their own scales, ternary weights as 2-bit codes with their two "
        "scales, quantized inputs as QuantizeLinear -> DequantizeLinear with the quantizer's scale, fp16 "
        "inputs as Cast round trips, pruned weights as exact zeros. The file passes onnx.checker, is "
        "run once in onnxruntime against the artifact, and `mncli score model.onnx` scores it as the "
        "artifact.",
        "Examples:",
        "  mncli export q.safetensors -o model.pt",
        "  mncli export q.safetensors -o model.ts --format torchscript",
        "  mncli export q.safetensors -o model.pt2 --format torch-export",
        "  mncli export q.safetensors -o model.onnx --format onnx",
        "  mncli export q.safetensors -o model.onnx --format onnx --opset 21 --json",
    ]
)

ExportOut = Annotated[
    Path,
    typer.Option(
        "-o", "--out", metavar="OUTPUT", rich_help_panel=OUTPUT,
        help="Output file (.pt, .ts, .pt2 or .onnx); written atomically.",
    ),
]  # fmt: skip
Format = Annotated[
    ExportFormat,
    typer.Option(
        "--format", "-f", metavar="FORMAT", rich_help_panel=OUTPUT,
        help="state-dict (for torch.load(PATH, weights_only=True), activation quantizer scales included), "
        "torchscript (torch.jit.load(PATH)), torch-export (torch.export.load(PATH).module()) or onnx "
        "(onnxruntime.InferenceSession(PATH), QDQ for quantized layers).",
    ),
]  # fmt: skip
Opset = Annotated[
    int | None,
    method_option(
        "--opset",
        metavar="N",
        help=f"ONNX opset (18-25). Default: the lowest holding the artifact's codes ({DEFAULT_OPSET}, or "
        f"{INT2_OPSET} for 2-bit and ternary codes); below that, codes go into wider integer types.",
        show_default=False,
    ),
]
NoCheck = Annotated[
    bool,
    method_option("--no-check", help="ONNX: skip the onnxruntime run against the artifact."),
]


def _table(inp: Path, result: dict):
    from rich.table import Table

    table = Table(title=f"exported {inp.name}", show_header=False)
    table.add_column("key")
    table.add_column("value")
    for key in ("output", "format", "tensors", "params", "opset"):
        if key in result:
            value = result[key]
            table.add_row(key, fmt_num(value) if isinstance(value, int) else str(value))
    table.add_row("input", "x".join(str(s) for s in result["input_shape"]))
    layers = result.get("layers")
    if layers:
        weights = ", ".join(f"{layers[k]} {k}" for k in ("fp32", "fp16", "int", "ternary") if layers[k])
        inputs = ", ".join(f"{layers[k]} {k[4:]}" for k in ("act_int", "act_fp16") if layers[k])
        table.add_row("layers", weights + (f"; quantized inputs: {inputs}" if inputs else ""))
    check = result.get("check") or {}
    if check.get("runtime"):
        table.add_row(
            "check",
            f"{check['runtime']}, {check['inputs']} random inputs: max |logit diff| "
            f"{check['max_abs_diff']:.3g}, top-1 agreement {check['top1_agreement']:.0%}",
        )
    return table


def register(app: typer.Typer) -> None:
    @app.command("export", help=HELP)
    def export(
        inp: InputArtifact,
        out: ExportOut,
        fmt: Format = ExportFormat.STATE_DICT,
        opset: Opset = None,
        no_check: NoCheck = False,
        as_json: Json = False,
    ) -> None:
        from mncli.stages.export import ExportConfig, run

        result = run(ExportConfig(input=inp, out=out, format=fmt, opset=opset, check=not no_check))
        output.emit(result, as_json=as_json, table=_table(inp, result), out_path=str(out))
