"""Published checkpoint layouts: how other code names the tensors of a network we build.

A layout knows one foreign naming (torchvision's EfficientNet, lukemelas' efficientnet_pytorch,
ProxylessNAS, EC2T, ...). `detect(state)` says from the keys (and shapes) whether a state dict is in
it; `convert(state, config)` renames it onto one of our architectures and says which one, with the
arguments that make its forward pass identical to the source implementation's. `config` is the
parsed JSON of a side file some layouts need (ProxylessNAS' `net.config`), else None.

Each layout lives in its own module of this package and registers itself with `register_layout`;
every module is imported on first use, so a new layout is one new file.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from mncli.errors import BadInput

State = dict[str, torch.Tensor]


@dataclass
class Converted:
    """A foreign state dict renamed onto our architecture `arch` built with `args`."""

    arch: str
    args: dict
    state: State
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Layout:
    name: str
    description: str
    detect: Callable[[State], bool]
    convert: Callable[[State, dict | None], Converted]
    config_help: str | None = None  # what side file the layout needs (None: none)


_LAYOUTS: dict[str, Layout] = {}
_loaded = False


def register_layout(layout: Layout) -> Layout:
    _LAYOUTS[layout.name] = layout
    return layout


def layouts() -> dict[str, Layout]:
    """Every registered layout by name (importing this package's modules once)."""
    global _loaded
    if not _loaded:
        for info in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{info.name}")
        _loaded = True
    return dict(_LAYOUTS)


def detect_layouts(state: State) -> list[Layout]:
    """The layouts whose keys `state` has (usually one; none for our own or an unknown naming)."""
    return [layout for layout in layouts().values() if layout.detect(state)]


def get_layout(name: str) -> Layout:
    known = layouts()
    if name not in known:
        raise BadInput(f"unknown checkpoint layout {name!r}", hint="known: " + ", ".join(sorted(known)))
    return known[name]
