"""`mncli import`: a foreign PyTorch checkpoint, in its published layout, as an mncli artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mncli.cli import output
from mncli.cli.options import ArchName, ArchOpt, Json, OutputArtifact
from mncli.text import fmt_num

HELP = "\n\n".join(
    [
        "Import a PyTorch checkpoint into an mncli artifact.",
        "Nothing the file names is imported or run: tensors and plain containers are read, any other "
        "pickled object (an optimizer class, Distiller's quantizer metadata) is replaced by an inert "
        'placeholder and named. A state dict nested under "state_dict" or "model" is unwrapped and '
        '"module." prefixes are stripped.',
        "The keys say which published layout the checkpoint is in (torchvision's and lukemelas' "
        "EfficientNet, torchvision's MobileNetV2, ProxylessNAS with its net.config, EC2T's MicroNet; "
        "`mncli inspect CHECKPOINT` lists them): it is renamed onto our architecture with the options "
        "that give the same logits, and the layout is printed. Otherwise the keys must fit --arch as "
        "they are. Every key and shape must match, or the differences are listed and nothing is written.",
        "Layers whose weights hold only -wn, 0 and +wp (in any float dtype) are recorded as ternary, so "
        "`score` charges them as ternary and later stages keep them so.",
        "Examples:",
        "  mncli import efficientnet_b1.pth -o b1.safetensors",
        "  mncli import proxyless.pth --config net.config -o proxyless.safetensors",
        "  mncli import checkpoint.pth.tar --arch resnet20 -o resnet20.safetensors",
        "  mncli import my.pt --arch my_models.py:build --arch-opt width=32 -o mine.safetensors",
    ]
)

Checkpoint = Annotated[
    Path,
    typer.Argument(
        metavar="CHECKPOINT",
        help="PyTorch checkpoint (.pt/.pth/.th/.tar) or .safetensors.",
        show_default=False,
    ),
]
Layout = Annotated[
    str,
    typer.Option(
        "--layout",
        metavar="LAYOUT",
        help="The checkpoint's key layout: auto (detect from the keys), none (keys as they are), or a "
        "layout's name (see mncli inspect CHECKPOINT).",
    ),
]
Config = Annotated[
    Path | None,
    typer.Option(
        "--config",
        metavar="FILE",
        help="Side file the layout needs (ProxylessNAS: net.config).",
        show_default=False,
    ),
]


def register(app: typer.Typer) -> None:
    @app.command("import", help=HELP)
    def import_(
        checkpoint: Checkpoint,
        out: OutputArtifact,
        arch: ArchName = None,
        arch_opt: ArchOpt = None,
        layout: Layout = "auto",
        config: Config = None,
        as_json: Json = False,
    ) -> None:
        from rich.table import Table

        from mncli.models import parse_arch_opts
        from mncli.stages.import_checkpoint import ImportConfig, run

        cfg = ImportConfig(arch=arch, arch_opts=parse_arch_opts(arch_opt), layout=layout, config=config)
        result = run(checkpoint, out, cfg)
        table = Table(title=f"imported {checkpoint.name}", show_header=False)
        table.add_column("key")
        table.add_column("value")
        table.add_row("output", str(out))
        table.add_row("layout", result["layout"])
        table.add_row("arch", result["arch"]["name"])
        table.add_row("tensors", str(result["tensors"]))
        table.add_row("parameters", fmt_num(result["params"]))
        table.add_row("ternary layers", str(result["ternary_layers"]))
        if result["replaced_objects"]:
            table.add_row("not loaded", ", ".join(result["replaced_objects"]))
        output.emit(result, as_json=as_json, table=table, out_path=str(out))
