"""Tiny `test-*` models (each under 20K parameters) that exercise every layer kind the stages handle:
linear layers, conv + BN + ReLU + pooling, residual blocks with a 1x1 `shortcut` conv and an identity
one, and depthwise-separable MBConv blocks with squeeze-excite and swish."""

from __future__ import annotations

import torch
from torch import nn

from mncli.models.blocks import check_act, init_weights
from mncli.models.mbconv import MBConvNet, parse_block
from mncli.models.registry import register_family

_TINY = {"default_dataset": "synthetic"}


class TinyMLP(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, input_size: int, hidden: int):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_channels * input_size * input_size, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.fc3 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act2(self.fc2(self.act1(self.fc1(self.flatten(x))))))


class TinyCNN(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(2 * width, 4 * width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * width)
        self.relu3 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        out = self.pool2(self.relu2(self.bn2(self.conv2(out))))
        out = self.relu3(self.bn3(self.conv3(out)))
        return self.fc(self.flatten(self.pool(out)))


class TinyResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class TinyResNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(TinyResBlock(width, width, 1))
        self.layer2 = nn.Sequential(TinyResBlock(width, 2 * width, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(self.flatten(self.pool(out)))


@register_family(
    "test-mlp",
    pattern=r"test-mlp",
    description="tiny MLP (3 linear layers) for tests",
    examples=["test-mlp"],
    **_TINY,
)
def test_mlp(
    *, num_classes: int = 10, in_channels: int = 3, input_size: int = 16, hidden: int = 16
) -> nn.Module:
    model = TinyMLP(num_classes, in_channels, input_size, hidden)
    init_weights(model)
    return model


@register_family(
    "test-cnn",
    pattern=r"test-cnn",
    description="tiny conv+BN+ReLU+pool network for tests",
    examples=["test-cnn"],
    **_TINY,
)
def test_cnn(
    *, num_classes: int = 10, in_channels: int = 3, input_size: int = 16, width: int = 8
) -> nn.Module:
    model = TinyCNN(num_classes, in_channels, width)
    init_weights(model)
    return model


@register_family(
    "test-resnet",
    pattern=r"test-resnet",
    description="tiny ResNet: an identity and a 1x1-conv shortcut block, for tests",
    examples=["test-resnet"],
    **_TINY,
)
def test_resnet(
    *, num_classes: int = 10, in_channels: int = 3, input_size: int = 16, width: int = 8
) -> nn.Module:
    model = TinyResNet(num_classes, in_channels, width)
    init_weights(model)
    return model


@register_family(
    "test-mbconv",
    pattern=r"test-mbconv",
    description="tiny MBConv net: depthwise-separable + expanded blocks, squeeze-excite, swish",
    examples=["test-mbconv"],
    **_TINY,
)
def test_mbconv(
    *, num_classes: int = 10, in_channels: int = 3, input_size: int = 16, act: str = "swish"
) -> nn.Module:
    blocks = [parse_block(b) for b in ("ir_r1_k3_s1_e1_c8_se0.25", "ir_r2_k3_s2_e4_c16_se0.25")]
    model = MBConvNet(
        blocks,
        stem_channels=8,
        stem_stride=1,
        head_channels=32,
        num_classes=num_classes,
        in_channels=in_channels,
        act=check_act(act),
    )
    init_weights(model)
    return model
