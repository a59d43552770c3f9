"""Global average pooling whose input gradient keeps the input's memory format, for CPU training.

For a channels_last input, autograd's gradient of `adaptive_avg_pool2d(x, 1)` (a mean over H x W)
comes back in the contiguous (NCHW) layout. The layer below, batch norm and its activation in
channels_last, then meets a gradient in the other layout, and ATen's CPU kernels for their backward
take their slow mixed-layout path on it. `patch_global_pools` routes each `nn.AdaptiveAvgPool2d` to
a 1 x 1 output through `_GlobalMean` while its input is channels_last: the forward is the module's
own, and the backward returns the same values as autograd's, laid out as the input is. Models that
pool with `x.mean((2, 3))` keep autograd's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mncli.engine.forwards import is_channels_last, replace_forwards


class _GlobalMean(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.input_shape = x.shape
        return F.adaptive_avg_pool2d(x, 1)

    @staticmethod
    def backward(ctx, grad_out):
        height, width = ctx.input_shape[2:]
        grad = torch.empty(
            ctx.input_shape, dtype=grad_out.dtype, device=grad_out.device, memory_format=torch.channels_last
        )
        return grad.copy_((grad_out / (height * width)).expand(ctx.input_shape))


def is_global_pool(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1))


def _layout_keeping_forward(module: torch.nn.AdaptiveAvgPool2d):
    original = type(module).forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not (x.requires_grad and is_channels_last(x)):
            return original(module, x)
        return _GlobalMean.apply(x)

    return forward


def patch_global_pools(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Give the model's global average pools the layout-keeping backward; returns the patched modules
    (undo with `forwards.restore_forward`)."""
    return replace_forwards(
        model, lambda module: _layout_keeping_forward(module) if is_global_pool(module) else None
    )
