"""Depthwise convolutions under CPU bfloat16 autocast: two routes around oneDNN's slow bf16 kernels.

- *Kernels larger than 3x3* run in fp32 (input cast up, output cast back to bf16): oneDNN's bf16
  depthwise kernels at 5x5 and 7x7 are about 3x slower than its fp32 ones with the casts included
  (forward + backward, batch 128, channels_last: 26-28 ms against 9-13 ms at 48x14x14 and 144x7x7
  on an Intel Xeon with AMX; strided 5x5 74 ms against 10 ms).
- *Strided 3x3 ones* keep bf16, but their input gradient, for which oneDNN's bf16 kernel is 30-60x
  slower than its fp32 one (44 ms vs 1 ms for 128x64x28x28, stride 2; the same for
  conv_transpose2d), is computed as what it is mathematically: a stride-1 depthwise convolution of
  the zero-upsampled output gradient with the flipped kernel, all in bf16 (3 ms for that layer; fp32
  with the casts took 19 ms at 128x48x28x28, this route 4.7 ms).

Stride-1 3x3 depthwise convs stay with autocast's bf16 (as fast as fp32 there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mncli.engine.forwards import replace_forwards

BF16 = torch.bfloat16


def is_depthwise(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def runs_in_fp32(module: torch.nn.Module) -> bool:
    return is_depthwise(module) and max(module.kernel_size) > 3


def is_strided_depthwise(module: torch.nn.Module) -> bool:
    return (
        is_depthwise(module)
        and max(module.stride) > 1
        and module.padding_mode == "zeros"
        and isinstance(module.padding, tuple)  # not "same"/"valid"
    )


class _StridedDepthwiseBF16(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        x16, w16 = x.to(BF16), weight.to(BF16)
        ctx.save_for_backward(x16, w16)
        ctx.conf = (stride, padding, dilation, groups)
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        return F.conv2d(x16, w16, None if bias is None else bias.to(BF16), stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out):
        x16, w16 = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        grad_x = grad_w = grad_b = None
        g16 = grad_out.to(BF16)
        if ctx.needs_input_grad[0]:
            grad_x = _input_grad(x16.shape, w16, g16, stride, padding, dilation).to(x_dtype)
        if ctx.needs_input_grad[1]:
            grad_w = torch.nn.grad.conv2d_weight(x16, w16.shape, g16, stride, padding, dilation, groups).to(
                w_dtype
            )
        if ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2, 3)).to(b_dtype)
        return grad_x, grad_w, grad_b, None, None, None, None


def _input_grad(input_shape, weight, grad_out, stride, padding, dilation) -> torch.Tensor:
    """d(loss)/d(input) of a depthwise conv: place grad_out on the stride grid of a zero tensor the
    size of the input plus (kernel - 1), offset by (kernel - 1 - padding), and correlate it with the
    flipped kernel at stride 1, no padding."""
    if max(dilation) > 1 or any(p > k - 1 for p, k in zip(padding, weight.shape[2:], strict=True)):
        return torch.nn.grad.conv2d_input(
            input_shape, weight.float(), grad_out.float(), stride, padding, dilation, weight.shape[0]
        )
    n, c, h, w = input_shape
    kh, kw = weight.shape[2:]
    (sh, sw), (ph, pw) = stride, padding
    oh, ow = grad_out.shape[2:]
    spread = torch.empty(
        (n, c, h + kh - 1, w + kw - 1), dtype=grad_out.dtype, memory_format=torch.channels_last
    )
    spread.zero_()
    top, left = kh - 1 - ph, kw - 1 - pw
    spread[:, :, top : top + sh * (oh - 1) + 1 : sh, left : left + sw * (ow - 1) + 1 : sw] = grad_out
    return F.conv2d(spread, weight.flip(2, 3), None, 1, 0, 1, c)


def _under_bf16_autocast() -> bool:
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") is BF16


def _bf16_route(module: torch.nn.Conv2d, original, x: torch.Tensor) -> torch.Tensor:
    return _StridedDepthwiseBF16.apply(
        x, module.weight, module.bias, module.stride, module.padding, module.dilation, module.groups
    )


def _fp32_route(module: torch.nn.Conv2d, original, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", enabled=False):
        return original(module, x.float()).to(BF16)


def _route(module: torch.nn.Module):
    """`module`'s route, or None when autocast's own bf16 is the faster."""
    if runs_in_fp32(module):
        return _fp32_route
    if is_strided_depthwise(module):
        return _bf16_route
    return None


def _routed_forward(module: torch.nn.Conv2d, route):
    """A forward that takes `route` under CPU bf16 autocast and the class's own forward elsewhere."""
    original = type(module).forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not _under_bf16_autocast():
            return original(module, x)
        return route(module, original, x)

    return forward


def patch_depthwise(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Route the model's depthwise convs as the module docstring says while CPU bf16 autocast is on;
    returns the patched modules (undo with `forwards.restore_forward`). Both routes read
    `module.weight` at each call, so weight parametrizations (masks, quantizers) still apply."""

    def forward_for(module: torch.nn.Module):
        route = _route(module)
        return None if route is None else _routed_forward(module, route)

    return replace_forwards(model, forward_for)
