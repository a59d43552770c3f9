"""Building blocks shared by the families.

Conventions every family follows, because pruning, ternarization and quantization pick their default
layers by them: residual projections have "shortcut" in their module name, squeeze-excite convs live in
a module named `se`, the first conv is the stem, the last Linear is the classifier, depthwise convs have
groups == in_channels. Activations are modules (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish), never
functional calls, so the scorer's tracer sees them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "hswish": nn.Hardswish,
    "hardswish": nn.Hardswish,
    "tanh": nn.Tanh,
}


def make_act(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; use one of {', '.join(ACTIVATIONS)}") from None


def check_act(name: str) -> str:
    make_act(name)
    return name.lower()


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
    """conv -> BN -> activation, with the children named `conv`, `bn`, `act` (stems and heads)."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int = 3,
        stride: int = 1,
        act: str | None = "relu",
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, bias=False)
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

    `se_ratio` is relative to the block's input channels (EfficientNet: 0.25 -> c_in // 4)."""

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
        self.dw = nn.Conv2d(hidden, hidden, kernel, stride, padding=kernel // 2, groups=hidden, bias=False)
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
        out = self.dw_act(self.dw_bn(self.dw(out)))
        if hasattr(self, "se"):
            out = self.se(out)
        return self._add_shortcut(self.project_bn(self.project(out)), x)


class FusedMBConvBlock(_ResidualBlock):
    """Fused-MBConv (EfficientNetV2): the 1x1 expand and the k x k depthwise conv of an MBConvBlock
    fused into one dense k x k `expand` conv -> optional `se` -> 1x1 `project`, residual as in
    MBConvBlock. With expand == 1 the block is the dense k x k conv alone (`expand`, with its
    activation, no project). At a few dozen channels a dense conv costs about what the MBConv's 1x1
    convs cost and mixes channels and space in one step, so early, narrow stages can afford it."""

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
    ):
        super().__init__()
        self._residual_setup("Fused-MBConv", c_in, c_out, kernel, stride, drop_path)
        hidden = c_out if expand == 1 else int(round(c_in * expand))
        self.expand = nn.Conv2d(c_in, hidden, kernel, stride, padding=kernel // 2, bias=False)
        self.expand_bn = nn.BatchNorm2d(hidden, eps=bn_eps, momentum=bn_momentum)
        self.expand_act = make_act(act)
        if se_ratio and se_ratio > 0:
            self.se = SqueezeExcite(hidden, max(1, int(c_in * se_ratio)), act=act)
        if expand != 1:
            self.project = nn.Conv2d(hidden, c_out, 1, bias=False)
            self.project_bn = nn.BatchNorm2d(c_out, eps=bn_eps, momentum=bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand_act(self.expand_bn(self.expand(x)))
        if hasattr(self, "se"):
            out = self.se(out)
        if hasattr(self, "project"):
            out = self.project_bn(self.project(out))
        return self._add_shortcut(out, x)
