"""MobileNetV2 (Sandler et al. 2018): `mobilenetv2`, `mobilenetv2-1.4` (width from the name) and
`mobilenetv2-cifar` (stride-1 stem and stride-1 second stage for 32 px inputs, 100 classes).

Same layer sizes as the reference ImageNet model (channels rounded to multiples of 8, the 1280-channel
head widened only for width > 1), so `mobilenetv2-1.4` at 1000 classes has 6,108,776 parameters.
"""

from __future__ import annotations

import re

from torch import nn

from mncli.models.blocks import init_weights, round_filters
from mncli.models.mbconv import MBConvNet, parse_block, scale_blocks
from mncli.models.registry import register_family

# t (expansion), c (channels), n (repeats), s (stride) of the paper's Table 2.
BLOCKS = [
    "ir_r1_k3_s1_e1_c16",
    "ir_r2_k3_s2_e6_c24",
    "ir_r3_k3_s2_e6_c32",
    "ir_r4_k3_s2_e6_c64",
    "ir_r3_k3_s1_e6_c96",
    "ir_r3_k3_s2_e6_c160",
    "ir_r1_k3_s1_e6_c320",
]


def _name_args(match: re.Match) -> dict:
    args: dict = {}
    if match.group("cifar"):
        args["cifar"] = True
    if match.group("width"):
        args["width_mult"] = float(match.group("width"))
    return args


def _resolve(args: dict) -> dict:
    if args["num_classes"] is None:
        args["num_classes"] = 100 if args["cifar"] else 1000
    if args["input_size"] is None:
        args["input_size"] = 32 if args["cifar"] else 224
    return args


@register_family(
    "mobilenetv2",
    pattern=r"mobilenetv2(?P<cifar>-cifar)?(?:-(?P<width>\d+(?:\.\d+)?))?",
    description="MobileNetV2 (-W: width multiplier; -cifar: stride-1 stem for 32 px)",
    examples=["mobilenetv2", "mobilenetv2-1.4", "mobilenetv2-cifar"],
    default_dataset=lambda args: "cifar100" if args["cifar"] else "imagenet",
    name_args=_name_args,
    resolve=_resolve,
)
def mobilenetv2(
    *,
    num_classes: int | None = None,
    in_channels: int = 3,
    input_size: int | None = None,
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    cifar: bool = False,
    dropout: float = 0.2,
) -> nn.Module:
    if width_mult <= 0 or depth_mult <= 0:
        raise ValueError("width_mult and depth_mult must be positive")
    blocks = scale_blocks([parse_block(b) for b in BLOCKS], width_mult, depth_mult)
    if cifar:
        blocks[1]["stride"] = 1
    model = MBConvNet(
        blocks,
        stem_channels=round_filters(32, width_mult),
        stem_stride=1 if cifar else 2,
        head_channels=round_filters(1280 * max(1.0, width_mult), 1.0),
        num_classes=num_classes,
        in_channels=in_channels,
        act="relu6",
        dropout=dropout,
    )
    init_weights(model)
    return model
