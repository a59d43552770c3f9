"""Wide ResNet (Zagoruyko & Komodakis 2016), pre-activation, for CIFAR: `wrn-D-K`.

D = 6n + 4 layers, widths 16, 16K, 32K, 64K; blocks BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3 with a 1x1
`shortcut` conv where the shape changes. `wrn-28-10` at 100 classes is the MicroNet CIFAR-100 baseline
(36,536,884 parameters); dropout 0.3 as in the paper's best CIFAR runs.
"""

from __future__ import annotations

import torch
from torch import nn

from mncli.models.registry import register_family


class WideBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, padding=1, bias=False)
        self.equal = c_in == c_out and stride == 1
        if not self.equal:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        # The projection reads the pre-activated input, as in the reference implementation.
        return out + (x if self.equal else self.shortcut(pre))


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int, dropout: float):
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4 (16, 22, 28, 40), got {depth}")
        if widen < 1:
            raise ValueError(f"widen factor must be >= 1, got {widen}")
        blocks = (depth - 4) // 6
        widths = [16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, padding=1, bias=False)
        c_in = 16
        for stage, c_out in enumerate(widths, start=1):
            layers = []
            for i in range(blocks):
                stride = 2 if (stage > 1 and i == 0) else 1
                layers.append(WideBlock(c_in, c_out, stride, dropout))
                c_in = c_out
            setattr(self, f"layer{stage}", nn.Sequential(*layers))
        self.bn = nn.BatchNorm2d(c_in)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c_in, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        out = self.relu(self.bn(out))
        return self.fc(self.flatten(self.pool(out)))


@register_family(
    "wrn",
    pattern=r"wrn-(?P<depth>\d+)-(?P<widen_factor>\d+)",
    description="Wide ResNet-D-K, pre-activation (wrn-28-10: MicroNet baseline)",
    examples=["wrn-28-10", "wrn-16-4"],
    default_dataset=lambda args: "cifar10" if args["num_classes"] == 10 else "cifar100",
)
def wrn(
    depth: int = 28,
    widen_factor: int = 10,
    *,
    num_classes: int = 100,
    in_channels: int = 3,
    input_size: int = 32,
    dropout: float = 0.3,
) -> nn.Module:
    return WideResNet(depth, widen_factor, num_classes, in_channels, dropout)
