"""Batch norm over few channels, for CPU training in channels_last: computed in the NCHW layout.

ATen's CPU batch norm kernels for a channels_last input spend a fixed cost on every pixel when the
channel count is small and no multiple of 16 (below 32 in fp32, 48 in bf16), so a stem or a first
expansion with 8, 12 or 24 channels at full resolution costs as much as a layer several times
wider; their NCHW kernels do not. `patch_narrow_batchnorms` gives each such `nn.BatchNorm2d` a
forward that, in training mode on a channels_last input, lays the input out as NCHW, runs the
module's own forward on it (the same statistics, running averages and momentum) and hands the
output back in channels_last. `_Relayout` makes each copy's gradient come back in the layout its
input had, so the backward runs in NCHW too: autograd's own copy would return the gradient in the
copy's layout, and the kernels' mixed-layout path is the slowest of all. The widths routed are
those bench/batchnorm_layout.py measured faster this way; wider layers keep channels_last, where
the copies cost more than they save.
"""

from __future__ import annotations

import functools

import torch

from mncli.engine.forwards import is_channels_last, replace_forwards


def is_narrow(channels: int, dtype: torch.dtype) -> bool:
    """Channel counts whose channels_last batch norm is slower than NCHW plus the layout copies."""
    widest = 47 if dtype is torch.bfloat16 else 31
    return channels <= widest and channels % 16 != 0


class _Relayout(torch.autograd.Function):
    """`x` copied to `memory_format`; its gradient copied back to `back`, the layout `x` had."""

    @staticmethod
    def forward(ctx, x, memory_format, back):
        ctx.back = back
        return x.contiguous(memory_format=memory_format)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous(memory_format=ctx.back), None, None


def nchw_forward(module: torch.nn.BatchNorm2d, for_dtype=lambda dtype: True):
    """The forward of the module docstring for `module`, for inputs whose dtype `for_dtype` accepts."""
    original = type(module).forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not (module.training and is_channels_last(x) and for_dtype(x.dtype)):
            return original(module, x)
        nchw = _Relayout.apply(x, torch.contiguous_format, torch.channels_last)
        return _Relayout.apply(original(module, nchw), torch.channels_last, torch.contiguous_format)

    return forward


def patch_narrow_batchnorms(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Route the model's narrow BatchNorm2d layers through NCHW; returns the patched modules (undo
    with `forwards.restore_forward`). Modules whose forward is already replaced (synchronised
    batch norm under torchrun) are left alone."""

    def forward_for(module: torch.nn.Module):
        # is_narrow in bf16 is the wider of the two rules; the forward applies the input's own
        if isinstance(module, torch.nn.BatchNorm2d) and is_narrow(module.num_features, torch.bfloat16):
            return nchw_forward(module, functools.partial(is_narrow, module.num_features))
        return None

    return replace_forwards(model, forward_for)
