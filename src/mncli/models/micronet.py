"""EC2T's CIFAR "MicroNet" (Marban et al. 2020): a pre-activation ResNet scaled by compound scaling.

Stem conv3x3-BN-ReLU, then 3 stages of BasicBlocks (BN, conv3x3, BN, ReLU, dropout 0.2, conv3x3, BN;
identity shortcut, or a 1x1 conv + BN `shortcut` where the shape changes), ReLU, global pool, `linear`.
Widths 16/32/64 and 7 blocks per stage at depth_mult = width_mult = 1; the multipliers use EfficientNet
rounding, so d = 1.4^3.5, w = 1.2^3.5 gives EC2T's winner: 23 blocks per stage, widths 32/64/120.
Key names follow EC2T's code (`layerX.Y.bn1/conv1/bn2/conv2/bn3`, `shortcut.0/1`). `pool="window"` pools
as EC2T's code does (`F.avg_pool2d` with the map's width as its window), whose float sums round differently
from AdaptiveAvgPool2d's: what an imported EC2T checkpoint needs for identical logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mncli.models.blocks import round_filters, round_repeats
from mncli.models.registry import register_family

BASE_WIDTHS = (16, 32, 64)
BASE_BLOCKS = 7


class PreActBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.relu(self.bn2(self.conv1(self.bn1(x)))))
        out = self.bn3(self.conv2(out))
        return out + self.shortcut(x)


class WindowAvgPool(nn.Module):
    """Average over a square window as wide as the map (EC2T's `F.avg_pool2d(out, out.size()[3])`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, x.shape[-1])


POOLS = {"adaptive": lambda: nn.AdaptiveAvgPool2d(1), "window": WindowAvgPool}


class MicroNetCifar(nn.Module):
    def __init__(
        self,
        widths: list[int],
        blocks: int,
        num_classes: int,
        in_channels: int,
        dropout: float,
        pool: str,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu1 = nn.ReLU(inplace=True)
        c_in = widths[0]
        for stage, c_out in enumerate(widths, start=1):
            layers = []
            for i in range(blocks):
                stride = 2 if (stage > 1 and i == 0) else 1
                layers.append(PreActBlock(c_in, c_out, stride, dropout))
                c_in = c_out
            setattr(self, f"layer{stage}", nn.Sequential(*layers))
        self.relu2 = nn.ReLU(inplace=True)
        self.pool = POOLS[pool]()
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(c_in, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(self.flatten(self.pool(self.relu2(out))))


def micronet_widths(width_mult: float) -> list[int]:
    return [round_filters(c, width_mult) for c in BASE_WIDTHS]


def micronet_blocks(depth_mult: float) -> int:
    return round_repeats(BASE_BLOCKS, depth_mult)


@register_family(
    "micronet-cifar",
    pattern=r"micronet-cifar",
    description="EC2T's pre-activation ResNet for compound scaling (scale it with depth_mult/width_mult)",
    examples=["micronet-cifar"],
    default_dataset="cifar100",
)
def micronet_cifar(
    *,
    num_classes: int = 100,
    in_channels: int = 3,
    input_size: int = 32,
    depth_mult: float = 1.0,
    width_mult: float = 1.0,
    dropout: float = 0.2,
    pool: str = "adaptive",
) -> nn.Module:
    if depth_mult <= 0 or width_mult <= 0:
        raise ValueError("depth_mult and width_mult must be positive")
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
    return MicroNetCifar(
        micronet_widths(width_mult), micronet_blocks(depth_mult), num_classes, in_channels, dropout, pool
    )
