"""fmnist-net: a small network for 28 px grey images (Fashion-MNIST), cheap by MicroNet counting.

    stem   3x3 conv, c0 channels, 28x28
    down1  3x3 conv stride 2 -> c1, 14x14 (a dense conv: cheap here and better than a separable one)
    stage1 `depth` inverted residual blocks (1x1 expand x`expand`, 3x3 depthwise, 1x1 project), 14x14
    down2  inverted residual block stride 2 -> c2, 7x7
    stage2 `depth` inverted residual blocks, 7x7
    head   1x1 conv -> `head` channels, global average pool, linear classifier

Widths are (16, 24, 48) * width_mult rounded to multiples of 8, the head 128 * width_mult. At the
defaults: about 56K parameters and 4.7M multiply-accumulates. ReLU everywhere (quantizes well).
`fmnist-net-tiny` (width_mult 0.5, depth 1) is the few-minute demo model.
"""

from __future__ import annotations

import torch
from torch import nn

from mncli.models.blocks import ConvBnAct, MBConvBlock, init_weights, round_filters
from mncli.models.registry import register_family


class FashionNet(nn.Module):
    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        widths: tuple[int, int, int],
        head: int,
        depth: int,
        expand: float,
        kernel: int,
        dropout: float,
    ):
        super().__init__()
        c0, c1, c2 = widths
        self.stem = ConvBnAct(in_channels, c0, 3, 1, act="relu")
        self.down1 = ConvBnAct(c0, c1, 3, 2, act="relu")
        self.stage1 = nn.Sequential(
            *[MBConvBlock(c1, c1, kernel, 1, expand, act="relu") for _ in range(depth)]
        )
        self.down2 = MBConvBlock(c1, c2, kernel, 2, expand, act="relu")
        self.stage2 = nn.Sequential(
            *[MBConvBlock(c2, c2, kernel, 1, expand, act="relu") for _ in range(depth)]
        )
        self.head = ConvBnAct(c2, head, 1, 1, act="relu")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.down1(self.stem(x))
        out = self.stage2(self.down2(self.stage1(out)))
        out = self.flatten(self.pool(self.head(out)))
        return self.classifier(self.dropout(out))


def _build(num_classes, in_channels, input_size, width_mult, depth, expand, kernel, head, dropout):
    if input_size < 8:
        raise ValueError(f"input_size {input_size} is too small (needs >= 8)")
    if depth < 0 or expand < 1 or width_mult <= 0 or kernel % 2 != 1:
        raise ValueError("need depth >= 0, expand >= 1, width_mult > 0 and an odd kernel")
    widths = tuple(round_filters(c, width_mult) for c in (16, 24, 48))
    model = FashionNet(
        num_classes,
        in_channels,
        widths,
        head or round_filters(128, width_mult),
        depth,
        expand,
        kernel,
        dropout,
    )
    init_weights(model)
    return model


@register_family(
    "fmnist-net",
    pattern=r"fmnist-net",
    description="small MBConv net for 28 px images (Fashion-MNIST baseline; width_mult, depth, expand)",
    examples=["fmnist-net"],
    default_dataset="fashion-mnist",
)
def fmnist_net(
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    input_size: int = 28,
    width_mult: float = 1.0,
    depth: int = 2,
    expand: float = 3.0,
    kernel: int = 3,
    head: int = 0,
    dropout: float = 0.0,
) -> nn.Module:
    return _build(num_classes, in_channels, input_size, width_mult, depth, expand, kernel, head, dropout)


@register_family(
    "fmnist-net-tiny",
    pattern=r"fmnist-net-tiny",
    description="fmnist-net at width 0.5, depth 1: trains in a minute or two (make demo)",
    examples=["fmnist-net-tiny"],
    default_dataset="fashion-mnist",
)
def fmnist_net_tiny(
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    input_size: int = 28,
    width_mult: float = 0.5,
    depth: int = 1,
    expand: float = 3.0,
    kernel: int = 3,
    head: int = 0,
    dropout: float = 0.0,
) -> nn.Module:
    return _build(num_classes, in_channels, input_size, width_mult, depth, expand, kernel, head, dropout)
