"""Resize conv / batch-norm / linear modules to recorded shapes (a channel-pruned model's rebuild).

`arch["shapes"]` maps a module name to its weight shape after structured pruning: a conv's
[out, in / groups, kh, kw], a linear's [out, in], a batch norm's [channels]. A key naming the
parameter ("layer1.0.conv1.weight") is accepted too. Modules are resized in place, so forward hooks
and child modules (activation quantizers) stay attached; their values are re-initialised and are
meant to be overwritten by the artifact's state dict.
"""

from __future__ import annotations

import torch
from torch import nn

from mncli.errors import BadInput


def _module_name(key: str, modules: dict[str, nn.Module]) -> str:
    if key in modules:
        return key
    if key.endswith(".weight") and key[: -len(".weight")] in modules:
        return key[: -len(".weight")]
    raise BadInput(f"recorded shape for {key!r}, but the architecture has no such module")


def _new_param(old: nn.Parameter | None, shape: tuple[int, ...]) -> nn.Parameter | None:
    if old is None:
        return None
    return nn.Parameter(
        torch.empty(shape, dtype=old.dtype, device=old.device), requires_grad=old.requires_grad
    )


def _resize_conv(name: str, conv: nn.Conv2d, shape: list[int]) -> None:
    if len(shape) != conv.weight.dim():
        raise BadInput(f"shape {shape} for conv {name} has the wrong rank")
    out_channels, per_group = int(shape[0]), int(shape[1])
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
    if depthwise and per_group == 1:
        conv.groups = conv.in_channels = out_channels
    else:
        if out_channels % conv.groups:
            raise BadInput(f"{name}: {out_channels} output channels do not split into {conv.groups} groups")
        conv.in_channels = per_group * conv.groups
    conv.out_channels = out_channels
    conv.weight = _new_param(conv.weight, tuple(int(s) for s in shape))
    if conv.bias is not None:
        conv.bias = _new_param(conv.bias, (out_channels,))
    conv.reset_parameters()


def _resize_linear(name: str, linear: nn.Linear, shape: list[int]) -> None:
    if len(shape) != 2:
        raise BadInput(f"shape {shape} for linear {name} must be [out, in]")
    linear.out_features, linear.in_features = int(shape[0]), int(shape[1])
    linear.weight = _new_param(linear.weight, (linear.out_features, linear.in_features))
    if linear.bias is not None:
        linear.bias = _new_param(linear.bias, (linear.out_features,))
    linear.reset_parameters()


def _resize_norm(name: str, norm: nn.modules.batchnorm._BatchNorm, shape: list[int]) -> None:
    if len(shape) != 1:
        raise BadInput(f"shape {shape} for batch norm {name} must be [channels]")
    channels = int(shape[0])
    norm.num_features = channels
    if norm.affine:
        norm.weight = _new_param(norm.weight, (channels,))
        norm.bias = _new_param(norm.bias, (channels,))
    if norm.track_running_stats:
        ref = norm.running_mean
        norm.running_mean = torch.zeros(channels, dtype=ref.dtype, device=ref.device)
        norm.running_var = torch.ones(channels, dtype=ref.dtype, device=ref.device)
    norm.reset_parameters()


def resize_to_shapes(model: nn.Module, shapes: dict[str, list[int]]) -> nn.Module:
    """Resize the named conv / batch-norm / linear modules of `model` in place; returns `model`."""
    modules = dict(model.named_modules())
    for key, shape in shapes.items():
        name = _module_name(key, modules)
        module = modules[name]
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            _resize_conv(name, module, list(shape))
        elif isinstance(module, nn.Linear):
            _resize_linear(name, module, list(shape))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            _resize_norm(name, module, list(shape))
        else:
            raise BadInput(
                f"recorded shape for {name!r}, a {type(module).__name__}: only conv/bn/linear resize"
            )
    return model


def module_shape(module: nn.Module) -> list[int]:
    """The shape `resize_to_shapes` records for a conv / batch-norm / linear module."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return [int(module.num_features)]
    return [int(s) for s in module.weight.shape]
