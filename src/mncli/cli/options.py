"""Option types shared by the commands, named once so every command spells them the same way.

Use as annotations: `def cmd(inp: InputArtifact, out: OutputArtifact, as_json: Json = False)`, and
`@training_options(epochs=3, lr=0.01)` on a training command: it adds every field of
`mncli.stages.training.TrainOptions` as an option (in the Data and Training help panels, with the
command's defaults), and hands the command one `train: TrainOptions`.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Annotated

import typer

from mncli.stages.training import TrainOptions

OUTPUT, METHOD = "Output", "Method"


def method_option(*flags: str, help: str, **kwargs: typing.Any) -> typing.Any:
    """A Typer option in the Method panel: what a command's own method takes."""
    return typer.Option(*flags, help=help, rich_help_panel=METHOD, **kwargs)


InputArtifact = Annotated[
    Path, typer.Argument(metavar="INPUT", help="Input artifact (.safetensors).", show_default=False)
]
OutputArtifact = Annotated[
    Path,
    typer.Option(
        "-o", "--out", metavar="OUTPUT", rich_help_panel=OUTPUT,
        help="Output artifact (.safetensors), written atomically once the stage succeeds. An mncli "
        "artifact already there is replaced (-n keeps it); any other file is never replaced.",
    ),
]  # fmt: skip
Json = Annotated[
    bool,
    typer.Option("--json", rich_help_panel=OUTPUT, help="Print one JSON object on stdout and nothing else."),
]
Recipe = Annotated[
    Path | None,
    typer.Option(
        "--recipe", rich_help_panel=METHOD, help="YAML or JSON file of per-layer settings with glob patterns."
    ),
]
ARCH_HELP = (
    "Architecture: a zoo name (see `mncli models`), torchvision:NAME, timm:NAME, "
    "path/to/file.py:builder or package.module:builder."
)
ArchName = Annotated[str | None, typer.Option("--arch", "-a", help=ARCH_HELP, show_default=False)]
ArchOpt = Annotated[
    list[str] | None, typer.Option("--arch-opt", help="Architecture argument as key=value (repeatable).")
]


def _hints() -> dict[str, typing.Any]:
    return typing.get_type_hints(TrainOptions)


def _cli_type(name: str) -> typing.Any:
    meta = _field(name).metadata
    return meta["cli"][0] if meta["parse"] is not None else _hints()[name]


def _field(name: str):
    return next(f for f in fields(TrainOptions) if f.name == name)


def train_option(name: str, help: str | None = None, panel: str | None = None) -> typing.Any:
    """The Typer annotation of one TrainOptions field: the same flags, help and panel as on the
    training commands, unless `help` or `panel` say otherwise (e.g. `eval --device`, not training)."""
    meta = _field(name).metadata
    option = typer.Option(*meta["flags"], help=help or meta["help"], rich_help_panel=panel or meta["panel"])
    return Annotated[_cli_type(name), option]


def _panel(annotation: typing.Any) -> str | None:
    return next((getattr(m, "rich_help_panel", None) for m in typing.get_args(annotation)[1:]), None)


def _cli_default(name: str, defaults: dict) -> typing.Any:
    """The command's default for an option; for a parsed option, what the command line holds when
    the option is not given (parse(that) is the field's "not given", None)."""
    f = _field(name)
    if f.metadata["parse"] is not None:
        return f.metadata["cli"][1]
    if name in defaults:
        return defaults[name]
    return f.default_factory() if f.default is MISSING else f.default


def training_options(**defaults: typing.Any) -> Callable:
    """Give a Typer command every TrainOptions field as an option and call it with `train=TrainOptions`.

    `defaults` are the command's own (they show in --help); None means "the method's default", which
    the stage fills in with `TrainOptions.resolved`. A `help_<name>` keyword replaces one option's help
    text, e.g. to say what the default is per method.
    """
    helps = {k.removeprefix("help_"): v for k, v in defaults.items() if k.startswith("help_")}
    defaults = {k: v for k, v in defaults.items() if not k.startswith("help_")}
    names = [f.name for f in fields(TrainOptions)]
    unknown = (set(defaults) | set(helps)) - set(names)
    if unknown:
        raise TypeError(f"not training options: {sorted(unknown)}")

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command)
        hints = typing.get_type_hints(command, include_extras=True)  # resolve `from __future__` strings
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation), kind=inspect.Parameter.KEYWORD_ONLY)
            for p in signature.parameters.values()
            if p.name != "train"
        ]
        added = [
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, annotation=train_option(name, helps.get(name)),
                default=_cli_default(name, defaults),
            )
            for name in names
        ]  # fmt: skip

        @functools.wraps(command)
        def wrapper(*args: typing.Any, **kwargs: typing.Any) -> typing.Any:
            values = {name: kwargs.pop(name) for name in names}
            for name in names:
                parse = _field(name).metadata["parse"]
                if parse is not None:
                    values[name] = parse(values[name])
            return command(*args, train=TrainOptions(**values), **kwargs)

        # --help lists the panels in this order: the command's own options, Data, Training, Output.
        output = [p for p in own if _panel(p.annotation) == OUTPUT]
        rest = [p for p in own if p not in output]
        wrapper.__signature__ = signature.replace(parameters=[*rest, *added, *output])
        return wrapper

    return decorate


# For commands that read a dataset without training (eval, score, verify).
InputDataset = train_option(
    "dataset",
    "fashion-mnist, mnist, cifar10, cifar100, imagenet or synthetic[:...] "
    "(default: the dataset the input was trained on).",
)
DataDir = train_option("data_dir")
Download = train_option("download")
Device = train_option("device", panel="Options")
