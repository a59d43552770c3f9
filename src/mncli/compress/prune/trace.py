"""Tracing for structured pruning: a torch.fx graph of the model with the shape of every tensor.

Parameter-free custom modules (pooling helpers, option-A shortcuts, drop-path) stay single nodes:
their Python may not be traceable, and `channel_order_kept` tests what they do to channels instead.
"""

from __future__ import annotations

import operator

import torch
from torch import nn

from mncli.errors import BadInput


def op_name(node: torch.fx.Node) -> str:
    target = node.target
    if isinstance(target, str):
        return target
    if target is operator.getitem:
        return "getitem"
    return getattr(target, "__name__", str(target))


def shape_of(node) -> tuple[int, ...] | None:
    if not isinstance(node, torch.fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


class _Tracer(torch.fx.Tracer):
    """Keeps parameter-free custom modules (pooling helpers, shortcuts, drop-path) as single nodes:
    their Python may not be traceable, and `_opaque` tests what they do to channels instead."""

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        if super().is_leaf_module(m, qualified_name):
            return True
        custom = not type(m).__module__.startswith("torch.")
        return custom and next(m.parameters(), None) is None and not list(m.children())


def channel_order_kept(node, module: nn.Module, source) -> bool:
    """Whether a parameter-free module treats channels independently and keeps their order: permuting
    the input channels permutes the output channels the same way (checked on random inputs)."""
    in_shape, out_shape = shape_of(source), shape_of(node)
    if in_shape is None or out_shape is None or len(in_shape) < 2 or len(out_shape) < 2:
        return False
    if in_shape[1] != out_shape[1] or in_shape[1] < 2 or len(node.args) != 1 or node.kwargs:
        return False
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(in_shape, generator=gen)
    perm = torch.randperm(in_shape[1], generator=gen)
    try:
        with torch.no_grad():
            return torch.allclose(module(x[:, perm]), module(x)[:, perm], atol=1e-6)
    except Exception:  # noqa: BLE001 - a module that cannot run alone is not understood
        return False


def trace(model: nn.Module, input_shape: tuple[int, ...]) -> torch.fx.GraphModule:
    """Symbolic trace plus shapes of every tensor (propagated on a zero batch, in eval mode)."""
    from torch.fx.passes.shape_prop import ShapeProp

    was_training = model.training
    model.eval()  # trace the inference graph (no drop-path or dropout branches)
    try:
        try:
            tracer = _Tracer()
            graph_module = torch.fx.GraphModule(model, tracer.trace(model))
        except Exception as exc:  # noqa: BLE001 - any tracing failure means: cannot analyse this model
            raise BadInput(
                f"structured pruning cannot trace this architecture: {type(exc).__name__}: {exc}",
                hint="use unstructured pruning (drop --structured) for this model",
            ) from None
        param = next(model.parameters())
        example = torch.zeros((1, *input_shape), dtype=param.dtype, device=param.device)
        with torch.no_grad():
            ShapeProp(graph_module).propagate(example)
    finally:
        model.train(was_training)
    return graph_module
