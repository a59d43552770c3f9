"""`mobilenetv2-rl1`: the MobileNetV2 of the reweighted-L1 CIFAR-100 seed ("Reweighted pruning",
LinLabNEU, `mobilenet_v2_cifar100_exp_30.py`): kuangliu's pytorch-cifar MobileNetV2 widened 1.3x.

What makes it differ from `mobilenetv2-cifar` (torchvision's layout):
- every block has its 1x1 expand conv, the expansion-1 block included;
- a stride-1 block whose width changes adds a 1x1 conv + BN projection (`shortcut.0/1`) to its output;
  stride-2 blocks have no residual at all;
- ReLU, not ReLU6; no dropout; PyTorch's default initialisation (the seed's);
- widths are `round(c * width_mult)` to a multiple of 8 (never below 8; no 10 % guard), the head is
  max(1280, that of 1280).

Module names and their order are the seed's (`conv1`, `bn1`, `layers.N.conv1/bn1/conv2/bn2/conv3/bn3/
shortcut.0/shortcut.1`, `conv2`, `bn2`, `linear`), so its checkpoints load as they are and a layer's
index among the convs and linears is the seed's `QBNs[i]`. At width 1.3 the convs hold 3,777,632
weights; the seed's README reports 3,905,632 because its testers.py adds a fixed 128,000 (1280 x 100)
for the classifier, whose real size here is 1664 x 100.
"""

from __future__ import annotations

import torch
from torch import nn

from mncli.models.registry import register_family
from mncli.models.resnet_cifar import GlobalAvgPool

# (expansion, output channels, blocks, stride of the first block): MobileNetV2's table with the
# CIFAR strides (second stage at stride 1), as kuangliu's port has it.
STAGES = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def widen(channels: int, width_mult: float, divisor: int = 8) -> int:
    """The seed's `expanding`: scale, round to the nearest multiple of 8, at least 8."""
    return max(divisor, int(channels * width_mult + divisor / 2) // divisor * divisor)


class Block(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 project (BN after each, ReLU after the first two); stride 1
    adds the input, through `shortcut` (1x1 conv + BN) when the width changes."""

    def __init__(self, c_in: int, c_out: int, expansion: int, stride: int):
        super().__init__()
        self.stride = stride
        hidden = expansion * c_in
        self.conv1 = nn.Conv2d(c_in, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(hidden, hidden, 3, stride, padding=1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(hidden, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride == 1 and c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


class MobileNetV2RL1(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, width_mult: float):
        super().__init__()
        stem = widen(32, width_mult)
        self.conv1 = nn.Conv2d(in_channels, stem, 3, 1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu1 = nn.ReLU()
        blocks, c_in = [], stem
        for expansion, channels, repeats, stride in STAGES:
            c_out = widen(channels, width_mult)
            for i in range(repeats):
                blocks.append(Block(c_in, c_out, expansion, stride if i == 0 else 1))
                c_in = c_out
        self.layers = nn.Sequential(*blocks)
        head = max(1280, widen(1280, width_mult))
        self.conv2 = nn.Conv2d(c_in, head, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(head)
        self.relu2 = nn.ReLU()
        self.pool = GlobalAvgPool()  # the seed's avg_pool2d(out, 4) over the 4 x 4 map of a 32 px input
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.relu1(self.bn1(self.conv1(x))))
        out = self.relu2(self.bn2(self.conv2(out)))
        return self.linear(self.flatten(self.pool(out)))


@register_family(
    "mobilenetv2-rl1",
    pattern=r"mobilenetv2-rl1",
    description="MobileNetV2 of the reweighted-L1 CIFAR-100 seed (kuangliu's CIFAR layout, width 1.3)",
    examples=["mobilenetv2-rl1"],
    default_dataset="cifar100",
)
def mobilenetv2_rl1(
    *,
    num_classes: int = 100,
    in_channels: int = 3,
    input_size: int = 32,
    width_mult: float = 1.3,
) -> nn.Module:
    if width_mult <= 0:
        raise ValueError("width_mult must be positive")
    return MobileNetV2RL1(num_classes, in_channels, width_mult)
