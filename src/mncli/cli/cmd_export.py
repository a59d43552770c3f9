"""`mncli export`: an artifact's real-valued weights as a PyTorch state dict or a TorchScript module."""

from __future__ import annotations

import enum
import os
import warnings
from pathlib import Path
from typing import Annotated

import typer

from mncli.cli import output
from mncli.cli.options import OUTPUT, InputArtifact, Json
from mncli.errors import RuntimeFailure
from mncli.text import fmt_num

HELP = "\n\n".join(
    [
        "Export an artifact's weights or its whole model for plain PyTorch.",
        "The weights are its real values (pruned zeros, ternary and n-bit weights decoded to floats). "
        "The programs (torchscript, torch-export) run without mncli at the model's native input size, "
        "with any batch size.",
        "Examples:",
        "  mncli export q.safetensors -o model.pt",
        "  mncli export q.safetensors -o model.ts --format torchscript",
        "  mncli export q.safetensors -o model.pt2 --format torch-export",
    ]
)


class ExportFormat(enum.StrEnum):
    """What `export` writes."""

    STATE_DICT = "state-dict"  # torch.load(PATH, weights_only=True), activation quantizer scales included
    TORCHSCRIPT = "torchscript"  # torch.jit.load(PATH)
    TORCH_EXPORT = "torch-export"  # torch.export.load(PATH).module()


def _atomic_write(out: Path, write) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    from mncli.artifact.tempfiles import make_temporary

    fd, tmp = make_temporary(out, suffix=f".tmp{out.suffix}")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _torch_export(model, example, name: str):
    import torch

    batch = torch.export.Dim("batch", min=1)
    try:
        return torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    except Exception:  # noqa: BLE001 - fall back to a fixed batch size of one
        pass
    try:
        return torch.export.export(model, (example[:1],))
    except Exception as exc:  # noqa: BLE001
        raise RuntimeFailure(f"cannot export {name} with torch.export: {exc}") from exc


def export_model(inp: Path, out: Path, fmt: ExportFormat | str) -> dict:
    import torch

    from mncli.artifact import check_output
    from mncli.bundle import load_bundle
    from mncli.text import parse_choice

    fmt = parse_choice(ExportFormat, fmt, "--format")
    check_output(out, inp, artifact=False)
    bundle = load_bundle(inp)
    model = bundle.model.eval()
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    example = torch.zeros(2, *bundle.input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        if fmt is ExportFormat.STATE_DICT:
            _atomic_write(out, lambda tmp: torch.save(state, tmp))
        elif fmt is ExportFormat.TORCHSCRIPT:
            try:
                with torch.no_grad():
                    traced = torch.jit.trace(model, example, check_trace=False)
            except Exception as exc:  # noqa: BLE001 - tracing failures come in many types
                raise RuntimeFailure(f"cannot trace {bundle.arch['name']} to TorchScript: {exc}") from exc
            _atomic_write(out, lambda tmp: torch.jit.save(traced, tmp))
        else:
            program = _torch_export(model, example, bundle.arch["name"])
            _atomic_write(out, lambda tmp: torch.export.save(program, tmp))
    return {
        "output": str(out),
        "format": fmt.value,
        "arch": bundle.arch,
        "input_shape": list(bundle.input_shape),
        "tensors": len(state),
        "params": sum(p.numel() for p in model.parameters()),
    }


ExportOut = Annotated[
    Path,
    typer.Option(
        "-o", "--out", metavar="OUTPUT", rich_help_panel=OUTPUT,
        help="Output file (.pt, .ts or .pt2); written atomically.",
    ),
]  # fmt: skip
Format = Annotated[
    ExportFormat,
    typer.Option(
        "--format", "-f", metavar="FORMAT", rich_help_panel=OUTPUT,
        help="state-dict (for torch.load(PATH, weights_only=True), activation quantizer scales included), "
        "torchscript (torch.jit.load(PATH)) or torch-export (torch.export.load(PATH).module()).",
    ),
]  # fmt: skip


def register(app: typer.Typer) -> None:
    @app.command("export", help=HELP)
    def export(
        inp: InputArtifact, out: ExportOut, fmt: Format = ExportFormat.STATE_DICT, as_json: Json = False
    ) -> None:
        from rich.table import Table

        result = export_model(inp, out, fmt)
        table = Table(title=f"exported {inp.name}", show_header=False)
        table.add_column("key")
        table.add_column("value")
        for key in ("output", "format", "tensors", "params"):
            table.add_row(key, fmt_num(result[key]) if isinstance(result[key], int) else str(result[key]))
        table.add_row("input", "x".join(str(s) for s in result["input_shape"]))
        output.emit(result, as_json=as_json, table=table, out_path=str(out))
