"""`mncli import`: a foreign PyTorch state dict mapped onto a registered architecture."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mncli.cli import output
from mncli.cli.options import ArchOpt, Json, OutputArtifact
from mncli.log import debug, log
from mncli.text import fmt_num

HELP = "\n\n".join(
    [
        "Import a PyTorch checkpoint (a state dict) into an mncli artifact.",
        "The file is read with torch.load(weights_only=True): no code is unpickled. A state dict nested "
        'under "state_dict" or "model" is unwrapped and "module." prefixes are stripped; then every key '
        "and shape must match the architecture exactly, or the differences are listed and nothing is "
        "written.",
        "Examples:",
        "  mncli import resnet20-12fca82f.th --arch resnet20 -o resnet20.safetensors",
        "  mncli import wrn.pt -a wrn-28-10 --arch-opt num_classes=10 -o w.safetensors",
    ]
)

Checkpoint = Annotated[
    Path,
    typer.Argument(
        metavar="CHECKPOINT", help="PyTorch checkpoint (.pt/.pth/.th) or .safetensors.", show_default=False
    ),
]
Arch = Annotated[str, typer.Option("--arch", "-a", help="Registered architecture (see mncli models).")]


def register(app: typer.Typer) -> None:
    @app.command("import", help=HELP)
    def import_(
        checkpoint: Checkpoint,
        arch: Arch,
        out: OutputArtifact,
        arch_opt: ArchOpt = None,
        as_json: Json = False,
    ) -> None:
        import hashlib

        from rich.table import Table

        from mncli.artifact import check_output
        from mncli.bundle import Bundle, save_bundle
        from mncli.models import create_model, parse_arch_opts
        from mncli.models.checkpoint import compare_state_dict, fit_state_dict, read_state_dict

        check_output(out, checkpoint)
        state, notes = read_state_dict(checkpoint)
        if notes["stripped_prefixes"]:
            log(f"stripped key prefixes: {', '.join(notes['stripped_prefixes'])}")
        if notes["dropped_non_tensors"]:
            log(f"ignored non-tensor entries: {', '.join(notes['dropped_non_tensors'][:10])}")
        model = create_model(arch, **parse_arch_opts(arch_opt))
        problems = compare_state_dict(model, state)
        for kind in ("missing", "unexpected"):  # the keys one by one with -v; the error sums them up
            for key in problems[kind][:20]:
                debug(f"{kind}: {key} {list(state[key].shape) if key in state else ''}".rstrip())
            if len(problems[kind]) > 20:
                debug(f"... and {len(problems[kind]) - 20} more {kind} keys")
        for item in problems["mismatched"][:20]:
            debug(f"shape mismatch: {item['key']} checkpoint {item['checkpoint']} model {item['model']}")
        fit_state_dict(model, state, arch)
        model.eval()
        digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
        params = {"checkpoint": str(checkpoint), "checkpoint_sha256": digest, **notes}
        bundle = Bundle(model=model, arch=model.arch)
        manifest = save_bundle(bundle, out, stage="import", params=params)
        n_params = sum(p.numel() for p in model.parameters())
        result = {
            "output": str(out),
            "arch": model.arch,
            "tensors": len(state),
            "params": n_params,
            "checkpoint_sha256": digest,
            "content_sha256": manifest.get("content_sha256"),
        }
        table = Table(title=f"imported {checkpoint.name}", show_header=False)
        table.add_column("key")
        table.add_column("value")
        table.add_row("output", str(out))
        table.add_row("arch", model.arch["name"])
        table.add_row("tensors", str(len(state)))
        table.add_row("parameters", fmt_num(n_params))
        output.emit(result, as_json=as_json, table=table, out_path=str(out))
