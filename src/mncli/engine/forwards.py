"""Per-instance forwards: how the engine's routes (depthwise.py, pooling.py, batchnorm.py,
strided_pointwise.py) and synchronised batch norm (distributed.py) change what a module computes
for the length of a fit.

Each sets `module.forward` on the instance, so the module keeps its class, parameters, buffers and
state-dict keys, and `restore_forward` undoes it by deleting that attribute. A module whose forward
is already replaced is left to whoever replaced it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Forward = Callable[[torch.Tensor], torch.Tensor]


def replace_forwards(model: torch.nn.Module, forward_for: Callable[[torch.nn.Module], Forward | None]):
    """Give each module of `model` the forward `forward_for(module)` returns (None: leave it);
    returns the modules changed."""
    replaced = []
    for module in model.modules():
        if "forward" in module.__dict__:
            continue
        forward = forward_for(module)
        if forward is not None:
            module.forward = forward
            replaced.append(module)
    return replaced


def restore_forward(modules: list[torch.nn.Module]) -> None:
    for module in modules:
        module.__dict__.pop("forward", None)


def is_channels_last(x: torch.Tensor) -> bool:
    """A 4-D tensor laid out channels_last and not also contiguous (as 1 x 1 pixels or 1 channel are)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
