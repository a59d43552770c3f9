"""Strided 1x1 convolutions on channels_last inputs, for CPU training: computed on the subsampled input.

On an AMD EPYC with AVX2 and no AVX-512 (Zen 3), PyTorch 2.14.1's CPU kernel for the weight gradient
of a 1x1 stride-2 conv in channels_last corrupts the heap when it runs on one thread (glibc aborts:
"corrupted double-linked list", "malloc(): unaligned tcache chunk detected"); NCHW, stride 1 and
two threads did not. A 1x1 conv with stride s and no padding reads only every s-th pixel, so it is
the stride-1 conv of `x[:, :, ::s, ::s]`: `patch_strided_pointwise` routes each such `nn.Conv2d`
that way while its input is channels_last. Outputs and gradients are the same convolution's; the
weight is read at each call, so parametrizations (masks, quantizers) still apply.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mncli.engine.forwards import is_channels_last, replace_forwards


def is_strided_pointwise(module: torch.nn.Module) -> bool:
    """A plain `nn.Conv2d` (not a subclass with its own forward) with a 1x1 kernel, a stride above 1
    and no padding."""
    return (
        isinstance(module, torch.nn.Conv2d)
        and type(module).forward is torch.nn.Conv2d.forward
        and module.kernel_size == (1, 1)
        and max(module.stride) > 1
        and isinstance(module.padding, tuple)
        and not any(module.padding)
    )


def _subsampling_forward(module: torch.nn.Conv2d):
    original = type(module).forward
    row_step, column_step = module.stride

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not is_channels_last(x):
            return original(module, x)
        picked = x[:, :, ::row_step, ::column_step]
        return F.conv2d(picked, module.weight, module.bias, 1, 0, 1, module.groups)

    return forward


def patch_strided_pointwise(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Route the model's strided 1x1 convs through their subsampled input; returns the patched
    modules (undo with `forwards.restore_forward`)."""
    return replace_forwards(model, lambda m: _subsampling_forward(m) if is_strided_pointwise(m) else None)
