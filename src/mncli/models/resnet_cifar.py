"""CIFAR ResNet (He et al. 2016, section 4.2): resnet20/32/44/56/110, 6n+2 layers, widths 16/32/64.

Option-A shortcuts (stride-2 subsampling plus zero channel padding, no parameters) by default, so the
state-dict keys are exactly those of the widely used CIFAR ResNet checkpoints: `conv1`, `bn1`,
`layerX.Y.conv1/bn1/conv2/bn2`, `linear`. Option B uses a 1x1 conv + BN projection (`shortcut.0/1`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mncli.models.registry import register_family


class ZeroPadShortcut(nn.Module):
    """Option A: take every second pixel and pad the new channels with zeros (no parameters)."""

    def __init__(self, stride: int, pad_channels: int):
        super().__init__()
        self.stride = stride
        self.pad_channels = pad_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        half = self.pad_channels // 2
        return F.pad(x, (0, 0, 0, 0, half, self.pad_channels - half))


class GlobalAvgPool(nn.Module):
    """Average over the whole feature map with avg_pool2d, bit for bit what the public CIFAR ResNet
    checkpoints were evaluated with (adaptive pooling sums in a different order)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, kernel_size=tuple(x.shape[-2:]))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, option: str):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            if option == "A":
                self.shortcut = ZeroPadShortcut(stride, c_out - c_in)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int, in_channels: int, width: int, shortcut: str):
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        blocks = (depth - 2) // 6
        widths = [width, 2 * width, 4 * width]
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        c_in = width
        for stage, c_out in enumerate(widths, start=1):
            layers = []
            for i in range(blocks):
                stride = 2 if (stage > 1 and i == 0) else 1
                layers.append(BasicBlock(c_in, c_out, stride, shortcut))
                c_in = c_out
            setattr(self, f"layer{stage}", nn.Sequential(*layers))
        self.pool = GlobalAvgPool()
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(c_in, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(self.flatten(self.pool(out)))


@register_family(
    "resnet-cifar",
    pattern=r"resnet(?P<depth>\d+)",
    description="CIFAR ResNet (6n+2 layers, widths 16/32/64, option-A zero-padded shortcuts)",
    examples=["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"],
    default_dataset=lambda args: "cifar100" if args["num_classes"] == 100 else "cifar10",
)
def resnet_cifar(
    depth: int = 20,
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 32,
    width: int = 16,
    shortcut: str = "A",
) -> nn.Module:
    shortcut = shortcut.upper()
    if shortcut not in ("A", "B"):
        raise ValueError(f"shortcut must be A (zero padding) or B (1x1 conv), got {shortcut!r}")
    return CifarResNet(depth, num_classes, in_channels, width, shortcut)
