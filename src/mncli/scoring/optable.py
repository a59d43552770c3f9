"""Which operations the counter knows: module types booked as one unit, functions and tensor methods by
short name, and the shape-only / metadata / dropout operations that are known and free."""

from __future__ import annotations

from typing import Any

from torch import nn

# fmt: off
# Module types booked as one unit (subclasses included). Their kind decides the rule.
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
MODULE_KINDS: list[tuple[tuple[type, ...], str]] = [
    (_CONV, "conv"),
    ((nn.Linear,), "linear"),
    (_BN, "bn"),
    ((nn.ReLU, nn.ReLU6, nn.Hardtanh), "relu"),
    ((nn.SiLU,), "silu"),
    ((nn.Sigmoid,), "sigmoid"),
    ((nn.Hardswish,), "hardswish"),
    ((nn.Hardsigmoid,), "hardsigmoid"),
    ((nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d), "adaptive_avgpool"),
    ((nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d), "avgpool"),
    ((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d), "maxpool"),
    ((nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d), "adaptive_maxpool"),
    ((nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity), "free"),
    ((nn.Flatten, nn.Unflatten), "free"),
]

# Functions and tensor methods by short name (trailing "_" of in-place forms and dunders removed).
FUNCTION_KINDS = {
    "add": "add", "sub": "add", "rsub": "add", "mul": "mul", "multiply": "mul", "div": "div",
    "true_divide": "div", "divide": "div", "relu": "relu", "relu6": "relu", "hardtanh": "relu",
    "clamp": "relu", "clip": "relu", "clamp_min": "relu", "clamp_max": "relu", "threshold": "relu",
    "silu": "silu", "sigmoid": "sigmoid", "hardswish": "hardswish", "hardsigmoid": "hardsigmoid",
    "mean": "mean", "sum": "sum", "amax": "reduce_max", "adaptive_avg_pool1d": "adaptive_avgpool",
    "adaptive_avg_pool2d": "adaptive_avgpool", "adaptive_avg_pool3d": "adaptive_avgpool",
    "avg_pool1d": "avgpool", "avg_pool2d": "avgpool", "avg_pool3d": "avgpool", "max_pool1d": "maxpool",
    "max_pool2d": "maxpool", "max_pool3d": "maxpool", "adaptive_max_pool1d": "adaptive_maxpool",
    "adaptive_max_pool2d": "adaptive_maxpool", "conv1d": "conv", "conv2d": "conv", "conv3d": "conv",
    "linear": "linear", "batch_norm": "bn",
}

# Shape-only, copy, metadata and dropout operations: known and free.
FREE = {
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute", "transpose", "t",
    "contiguous", "squeeze", "unsqueeze", "expand", "expand_as", "cat", "concat", "concatenate", "stack",
    "split", "chunk", "narrow", "getitem", "pad", "size", "dim", "ndimension", "numel", "len", "to",
    "float", "type_as", "detach", "clone", "identity", "movedim", "unbind", "select", "channel_shuffle",
    "pixel_shuffle", "roll", "flip", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
    "feature_alpha_dropout", "is_floating_point", "is_contiguous", "is_complex", "type", "element_size",
    "dim_order", "get_device", "stride", "_assert", "storage_offset", "data_ptr", "requires_grad",
    "format", "repr", "zeros_like", "ones_like", "empty_like", "full_like", "new_zeros", "new_ones",
    "new_empty", "new_full",
}


# fmt: on


def module_kind(module: nn.Module) -> str | None:
    for types, kind in MODULE_KINDS:
        if isinstance(module, types):
            return kind
    return None


def short_name(func: Any) -> str:
    name = getattr(func, "__name__", "") or ""
    if name == "__get__":  # a property read such as Tensor.shape
        return "property"
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
        if (
            name not in ("getitem", "len", "format", "repr")
            and name[:1] in ("i", "r")
            and name[1:] in ("add", "sub", "mul", "truediv", "div")
        ):
            name = name[1:]
        name = {"truediv": "div"}.get(name, name)
    return name[:-1] if name.endswith("_") and not name.endswith("__") else name
