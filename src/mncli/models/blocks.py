"""Building blocks shared by the families.

Conventions every family follows, because pruning, ternarization and quantization pick their default
layers by them: residual projections have "shortcut" in their module name, squeeze-excite convs live in
a module named `se`, the first conv is the stem, the last Linear is the classifier, depthwise convs have
groups == in_channels. Activations are modules (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish), never
functional calls, so the scorer's tracer sees them.

Convs pad in one of two ways (`padding`): "symmetric", k // 2 on every side inside the conv (PyTorch's
way, and the default), or "same", TensorFlow's SAME padding: a `SamePad` module before a conv built
with padding=0 pads from the input's size at run time so that the output is ceil(input / stride),
the odd pixel going to the bottom and right (models ported from TensorFlow need it).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class MulSwish(nn.SiLU):
    """Swish computed as x * sigmoid(x): a sigmoid, then a multiply, as efficientnet_pytorch and
    TensorFlow compute it. nn.SiLU's fused kernel rounds differently (by up to an ulp), so only this
    form reproduces those models bit for bit. A subclass of nn.SiLU, so whatever knows SiLU (the
    scorer, the channel pruner) takes it for one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


ACTIVATIONS = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "hswish": nn.Hardswish,
    "hardswish": nn.Hardswish,
    "tanh": nn.Tanh,
}
# The same functions computed as another library computes them, for weights ported from it: not
# choices of their own (the search offers ACTIVATIONS), but what makes the port's logits identical.
PORTED_ACTIVATIONS = {"swish_mul": MulSwish}


def make_act(name: str) -> nn.Module:
    try:
        return {**ACTIVATIONS, **PORTED_ACTIVATIONS}[name.lower()]()
    except KeyError:
        known = ", ".join([*ACTIVATIONS, *PORTED_ACTIVATIONS])
        raise ValueError(f"unknown activation {name!r}; use one of {known}") from None


def check_act(name: str) -> str:
    make_act(name)
    return name.lower()


PADDINGS = ("symmetric", "same")


def check_padding(padding: str) -> str:
    if padding not in PADDINGS:
        raise ValueError(f"unknown padding {padding!r}; use one of {', '.join(PADDINGS)}")
    return padding


class SamePad(nn.Module):
    """TensorFlow's SAME padding for the k x k, stride-s conv that follows (which has padding=0): in
    all max((ceil(n / s) - 1) * s + k - n, 0) zeros along a side of n pixels, half of them (rounded
    down) before, the rest after."""

    def __init__(self, kernel: int, stride: int):
        super().__init__()
        self.kernel, self.stride = int(kernel), int(stride)

    def _total(self, size: int) -> int:
        return max((-(-size // self.stride) - 1) * self.stride + self.kernel - size, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h, pad_w = self._total(x.shape[-2]), self._total(x.shape[-1])
        if pad_h == 0 and pad_w == 0:
            return x
        return nn.functional.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}"


def conv_padding(kernel: int, padding: str) -> int:
    """The padding argument of a k x k nn.Conv2d: k // 2 when symmetric, 0 when a SamePad pads."""
    return kernel // 2 if check_padding(padding) == "symmetric" else 0


def needs_same_pad(kernel: int, padding: str) -> bool:
    """Whether a k x k conv gets a SamePad in front (a 1x1 conv never needs padding)."""
    return check_padding(padding) == "same" and kernel > 1


def round_filters(channels: float, width_mult: float, divisor: int = 8) -> int:
    """EfficientNet's channel rounding: scale, round to a multiple of 8, never lose more than 10 %."""
    scaled = channels * width_mult
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth_mult: float) -> int:
    return int(math.ceil(depth_mult * repeats))


def init_weights(model: nn.Module, mode: str = "fan_out") -> None:
    """He-normal convs, unit BN, small normal classifiers: the usual start for every family."""
    for module in model.modules():
        if any(t.is_meta for t in module.parameters(recurse=False)):
            continue  # built on the meta device (scoring, loading): no values to fill
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode=mode, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
            if module.weight is not None:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class ConvBnAct(nn.Sequential):
    """conv -> BN -> activation, with the children named `conv`, `bn`, `act` (stems and heads), and a
    `pad` (SamePad) before the conv with padding "same"."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int = 3,
        stride: int = 1,
        act: str | None = "relu",
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        padding: str = "symmetric",
    ):
        super().__init__()
        if needs_same_pad(kernel, padding):
            self.pad = SamePad(kernel, stride)
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding=conv_padding(kernel, padding), bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=bn_eps, momentum=bn_momentum)
        if act is not None:
            self.act = make_act(act)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: global pool, 1x1 `reduce`, activation, 1x1 `expand`, sigmoid, scale x."""

    def __init__(self, channels: int, reduced: int, act: str = "swish"):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act = make_act(act)
        self.expand = nn.Conv2d(reduced, channels, 1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.gate(self.expand(self.act(self.reduce(self.pool(x)))))
        return x * scale


class DropPath(nn.Module):
    """Stochastic depth on the residual branch (EfficientNet's drop connect); identity in eval mode."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = float(rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate <= 0.0:
            return x
        keep = 1.0 - self.rate
        mask = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class _ResidualBlock(nn.Module):
    """What MBConv and Fused-MBConv share: the shape checks and the residual add (with drop-path) when
    stride is 1 and c_in == c_out."""

    def _residual_setup(self, kind: str, c_in: int, c_out: int, kernel: int, stride: int, drop_path: float):
        if stride not in (1, 2):
            raise ValueError(f"{kind} stride must be 1 or 2, got {stride}")
        if kernel % 2 != 1:
            raise ValueError(f"{kind} kernel must be odd, got {kernel}")
        self.c_in, self.c_out, self.stride = c_in, c_out, stride
        self.use_residual = stride == 1 and c_in == c_out
        if self.use_residual and drop_path > 0:
            self.drop_path = DropPath(drop_path)

    def _add_shortcut(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if not self.use_residual:
            return out
        if hasattr(self, "drop_path"):
            out = self.drop_path(out)
        return out + x


class MBConvBlock(_ResidualBlock):
    """Inverted residual (MobileNetV2 / EfficientNet / ProxylessNAS): 1x1 `expand` -> k x k depthwise `dw`
    -> optional squeeze-excite `se` -> 1x1 `project`, with a residual add when stride is 1 and
    c_in == c_out. With expand == 1 there is no expand conv (a depthwise-separable block).

    `se_ratio` is relative to the block's input channels (EfficientNet: 0.25 -> c_in // 4). With
    padding "same" a SamePad `dw_pad` pads before the depthwise conv."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int = 3,
        stride: int = 1,
        expand: float = 6,
        se_ratio: float = 0.0,
        act: str = "relu6",
        drop_path: float = 0.0,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        padding: str = "symmetric",
    ):
        super().__init__()
        self._residual_setup("MBConv", c_in, c_out, kernel, stride, drop_path)
        hidden = int(round(c_in * expand))
        if expand != 1:
            self.expand = nn.Conv2d(c_in, hidden, 1, bias=False)
            self.expand_bn = nn.BatchNorm2d(hidden, eps=bn_eps, momentum=bn_momentum)
            self.expand_act = make_act(act)
        else:
            hidden = c_in
        if needs_same_pad(kernel, padding):
            self.dw_pad = SamePad(kernel, stride)
        self.dw = nn.Conv2d(
            hidden, hidden, kernel, stride, padding=conv_padding(kernel, padding), groups=hidden, bias=False
        )
        self.dw_bn = nn.BatchNorm2d(hidden, eps=bn_eps, momentum=bn_momentum)
        self.dw_act = make_act(act)
        if se_ratio and se_ratio > 0:
            self.se = SqueezeExcite(hidden, max(1, int(c_in * se_ratio)), act=act)
        self.project = nn.Conv2d(hidden, c_out, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(c_out, eps=bn_eps, momentum=bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if hasattr(self, "expand"):
            out = self.expand_act(self.expand_bn(self.expand(out)))
        if hasattr(self, "dw_pad"):
            out = self.dw_pad(out)
        out = self.dw_act(self.dw_bn(self.dw(out)))
        if hasattr(self, "se"):
            out = self.se(out)
        return self._add_shortcut(self.project_bn(self.project(out)), x)


class FusedMBConvBlock(_ResidualBlock):
    """Fused-MBConv (EfficientNetV2): the 1x1 expand and the k x k depthwise conv of an MBConvBlock
    fused into one dense k x k `expand` conv -> optional `se` -> 1x1 `project`, residual as in
    MBConvBlock. With expand == 1 the block is the dense k x k conv alone (`expand`, with its
    activation, no project). At a few dozen channels a dense conv costs about what the MBConv's 1x1
    convs cost and mixes channels and space in one step, so early, narrow stages can afford it. With
    padding "same" a SamePad `expand_pad` pads before the k x k conv."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int = 3,
        stride: int = 1,
        expand: float = 4,
        se_ratio: float = 0.0,
        act: str = "relu6",
        drop_path: float = 0.0,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        padding: str = "symmetric",
    ):
        super().__init__()
        self._residual_setup("Fused-MBConv", c_in, c_out, kernel, stride, drop_path)
        hidden = c_out if expand == 1 else int(round(c_in * expand))
        if needs_same_pad(kernel, padding):
            self.expand_pad = SamePad(kernel, stride)
        self.expand = nn.Conv2d(
            c_in, hidden, kernel, stride, padding=conv_padding(kernel, padding), bias=False
        )
        self.expand_bn = nn.BatchNorm2d(hidden, eps=bn_eps, momentum=bn_momentum)
        self.expand_act = make_act(act)
        if se_ratio and se_ratio > 0:
            self.se = SqueezeExcite(hidden, max(1, int(c_in * se_ratio)), act=act)
        if expand != 1:
            self.project = nn.Conv2d(hidden, c_out, 1, bias=False)
            self.project_bn = nn.BatchNorm2d(c_out, eps=bn_eps, momentum=bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if hasattr(self, "expand_pad"):
            out = self.expand_pad(out)
        out = self.expand_act(self.expand_bn(self.expand(out)))
        if hasattr(self, "se"):
            out = self.se(out)
        if hasattr(self, "project"):
            out = self.project_bn(self.project(out))
        return self._add_shortcut(out, x)
