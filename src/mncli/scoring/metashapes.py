"""Fast shapes on the meta device: `meta_device()` builds models there without running initialisers,
and `meta_shortcut` gives the output of a few ops without running them: their Python meta
kernels are slow (batch norm alone was 2/3 of an EfficientNet-B7 trace) and the first one to run
imports torch._dynamo, which costs seconds."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from mncli.scoring.optable import short_name

# Functions whose output shape is known without running them on the meta device.
_SAME_SHAPE = {"batch_norm", "relu", "relu6", "hardtanh", "silu", "sigmoid", "hardswish", "hardsigmoid"}
_BINARY = {"add", "sub", "mul", "div"}


def _inplace(func: Any) -> bool:
    name = getattr(func, "__name__", "")
    return name.startswith("__i") or (name.endswith("_") and not name.endswith("__"))


def meta_shortcut(func: Any, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The output of a few ops on the meta device without running them: their Python meta kernels are
    slow (batch norm was 2/3 of a B7 trace) and the first one imports torch._dynamo (seconds)."""
    first = args[0] if args else kwargs.get("input")
    if not isinstance(first, torch.Tensor) or not first.is_meta:
        return None
    name = short_name(func)
    if name in _SAME_SHAPE:
        return first if _inplace(func) else torch.empty_like(first)
    if name in _BINARY:
        operands = [a for a in args[:2] if isinstance(a, torch.Tensor | int | float)]
        if (
            len(operands) != 2
            or kwargs
            or any(isinstance(a, torch.Tensor) and not a.is_meta for a in operands)
        ):
            return None
        shape = torch.broadcast_shapes(*(tuple(a.shape) for a in operands if isinstance(a, torch.Tensor)))
        if _inplace(func):
            return first if tuple(first.shape) == tuple(shape) else None
        return torch.empty(shape, dtype=torch.result_type(*operands), device="meta")
    if name == "linear":
        weight = kwargs.get("weight", args[1] if len(args) > 1 else None)
        if isinstance(weight, torch.Tensor) and weight.dim() == 2:
            return torch.empty((*first.shape[:-1], weight.shape[0]), dtype=first.dtype, device="meta")
        return None
    if name in ("mean", "sum") and first.is_floating_point():
        dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
        keep = bool(kwargs.get("keepdim", args[2] if len(args) > 2 else False))
        if dims is None or kwargs.get("dtype") is not None:
            return None
        dims = {d % first.dim() for d in ([dims] if isinstance(dims, int) else dims)}
        shape = [1 if i in dims else n for i, n in enumerate(first.shape) if keep or i not in dims]
        return torch.empty(shape, dtype=first.dtype, device="meta")
    if name in ("adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d"):
        size = kwargs.get("output_size", args[1] if len(args) > 1 else None)
        spatial = first.dim() - 2
        if size is None:
            return None
        size = [size] * spatial if isinstance(size, int) else list(size)
        shape = [*first.shape[:2], *(s if s is not None else first.shape[2 + i] for i, s in enumerate(size))]
        return torch.empty(shape, dtype=first.dtype, device="meta")
    return None


_INITIALISERS = (
    "normal_",
    "uniform_",
    "trunc_normal_",
    "kaiming_normal_",
    "kaiming_uniform_",
    "xavier_normal_",
    "xavier_uniform_",
    "zeros_",
    "ones_",
    "constant_",
    "orthogonal_",
)


@contextmanager
def meta_device() -> Iterator[None]:
    """Build models on the meta device, skipping `nn.init` calls on meta tensors: there are no values to
    fill, and some initialisers (normal_) run slow Python decompositions there (6 of 7 s for B7)."""
    from torch.nn import init

    saved = {name: getattr(init, name) for name in _INITIALISERS if hasattr(init, name)}

    def skipping(original):
        def initialiser(tensor, *args, **kwargs):
            return tensor if tensor.is_meta else original(tensor, *args, **kwargs)

        return initialiser

    for name, original in saved.items():
        setattr(init, name, skipping(original))
    try:
        with torch.device("meta"):
            yield
    finally:
        for name, original in saved.items():
            setattr(init, name, original)
