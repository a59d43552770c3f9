"""LeNet-5 (LeCun et al. 1998) in its common modern form: ReLU and max pooling.

conv 5x5 (6) -> pool -> conv 5x5 (16) -> pool -> fc 120 -> fc 84 -> classifier. 28 px inputs get
padding 2 on the first conv so the feature map sizes are the paper's (28 -> 14 -> 10 -> 5).
"""

from __future__ import annotations

import torch
from torch import nn

from mncli.models.blocks import make_act
from mncli.models.registry import register_family


class LeNet5(nn.Module):
    def __init__(
        self, num_classes: int, in_channels: int, input_size: int, padding: int, act: str, pool: str
    ):
        super().__init__()
        pool_cls = nn.MaxPool2d if pool == "max" else nn.AvgPool2d
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=padding)
        self.act1 = make_act(act)
        self.pool1 = pool_cls(2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.act2 = make_act(act)
        self.pool2 = pool_cls(2)
        size = ((input_size + 2 * padding - 4) // 2 - 4) // 2
        if size < 1:
            raise ValueError(
                f"input_size {input_size} is too small for LeNet-5 (needs >= {16 - 2 * padding})"
            )
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * size * size, 120)
        self.act3 = make_act(act)
        self.fc2 = nn.Linear(120, 84)
        self.act4 = make_act(act)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool1(self.act1(self.conv1(x)))
        out = self.flatten(self.pool2(self.act2(self.conv2(out))))
        return self.fc3(self.act4(self.fc2(self.act3(self.fc1(out)))))


def _resolve(args: dict) -> dict:
    if args["padding"] is None:
        args["padding"] = max(0, (32 - args["input_size"]) // 2)
    if args["act"] not in ("relu", "tanh"):
        raise ValueError(f"act must be relu or tanh, got {args['act']!r}")
    if args["pool"] not in ("max", "avg"):
        raise ValueError(f"pool must be max or avg, got {args['pool']!r}")
    return args


@register_family(
    "lenet",
    pattern=r"lenet-?5",
    description="LeNet-5 (ReLU, max pooling) for 28 px digits and fashion",
    examples=["lenet5"],
    default_dataset="fashion-mnist",
    resolve=_resolve,
)
def lenet5(
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    input_size: int = 28,
    padding: int | None = None,
    act: str = "relu",
    pool: str = "max",
) -> nn.Module:
    return LeNet5(num_classes, in_channels, input_size, padding, act, pool)
