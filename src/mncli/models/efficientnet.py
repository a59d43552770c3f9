"""EfficientNet-B0..B7 (Tan & Le 2019) from block strings with compound scaling.

B0's blocks, swish everywhere, squeeze-excite at 0.25 of each block's input channels, stem 32 and head
1280 (both scaled by round_filters), repeats by round_repeats; each variant's (width, depth, resolution,
dropout) from the paper's table; drop connect 0.2 rising linearly over the blocks; BN momentum 0.01 and
eps 1e-3 as in the TensorFlow reference. B0 at 1000 classes has 5,288,548 parameters.

What ported weights need is an argument: `bn_eps` and `bn_momentum` (torchvision's B0-B4 use
PyTorch's 1e-5 and 0.1), `padding="same"` (TensorFlow's SAME padding, which efficientnet_pytorch
reproduces) and `act="swish_mul"` (swish as x * sigmoid(x), efficientnet_pytorch's rounding).
`variant_of` names the variant that has given stem, block and head sizes.
"""

from __future__ import annotations

import math

from torch import nn

from mncli.errors import BadInput
from mncli.models.blocks import check_act, check_padding, round_filters, round_repeats
from mncli.models.mbconv import MBConvNet, parse_block, scale_blocks
from mncli.models.registry import register_family

B0_BLOCKS = [
    "ir_r1_k3_s1_e1_c16_se0.25",
    "ir_r2_k3_s2_e6_c24_se0.25",
    "ir_r2_k5_s2_e6_c40_se0.25",
    "ir_r3_k3_s2_e6_c80_se0.25",
    "ir_r3_k5_s1_e6_c112_se0.25",
    "ir_r4_k5_s2_e6_c192_se0.25",
    "ir_r1_k3_s1_e6_c320_se0.25",
]

# variant -> (width_mult, depth_mult, resolution, dropout)
VARIANTS = {
    0: (1.0, 1.0, 224, 0.2),
    1: (1.0, 1.1, 240, 0.2),
    2: (1.1, 1.2, 260, 0.3),
    3: (1.2, 1.4, 300, 0.3),
    4: (1.4, 1.8, 380, 0.4),
    5: (1.6, 2.2, 456, 0.4),
    6: (1.8, 2.6, 528, 0.5),
    7: (2.0, 3.1, 600, 0.5),
}


def _sizes(variant: int) -> tuple[int, int, int]:
    """(stem channels, number of blocks, head channels) of a variant."""
    width, depth, _, _ = VARIANTS[variant]
    blocks = sum(round_repeats(parse_block(b)["repeats"], depth) for b in B0_BLOCKS)
    return round_filters(32, width), blocks, round_filters(1280, width)


def variant_of(stem_channels: int, num_blocks: int, head_channels: int) -> int | None:
    """The variant (0..7) with these sizes, None when no variant has them."""
    wanted = (stem_channels, num_blocks, head_channels)
    return next((variant for variant in VARIANTS if _sizes(variant) == wanted), None)


def variant_from_sizes(source: str, stem_channels: int, num_blocks: int, head_channels: int) -> int:
    """The variant with these sizes; BadInput naming `source` (a checkpoint's layout) when none has them."""
    variant = variant_of(stem_channels, num_blocks, head_channels)
    if variant is None:
        raise BadInput(
            f"{source} checkpoint has stem {stem_channels}, {num_blocks} blocks and head {head_channels}: "
            "no EfficientNet-B0..B7 has these sizes",
            hint=f"stem/blocks/head of each variant: {variant_sizes()}",
        )
    return variant


def variant_sizes() -> str:
    """Every variant's sizes, for messages: "b0 32/16/1280, b1 32/23/1280, ..."."""
    return ", ".join(f"b{v} " + "/".join(str(n) for n in _sizes(v)) for v in VARIANTS)


def _resolve(args: dict) -> dict:
    if args["variant"] not in VARIANTS:
        raise ValueError(f"EfficientNet variant must be 0..7, got {args['variant']}")
    width, depth, resolution, dropout = VARIANTS[args["variant"]]
    for key, value in (("width_mult", width), ("depth_mult", depth), ("input_size", resolution)):
        if args[key] is None:
            args[key] = value
    if args["dropout"] is None:
        args["dropout"] = dropout
    return args


def _init(model: nn.Module) -> None:
    """The reference initialisation: convs N(0, sqrt(2 / fan_out)), dense U(+-1/sqrt(classes))."""
    for module in model.modules():
        if any(t.is_meta for t in module.parameters(recurse=False)):
            continue  # built on the meta device (scoring, loading): no values to fill
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            bound = 1.0 / math.sqrt(module.out_features)
            nn.init.uniform_(module.weight, -bound, bound)
            nn.init.zeros_(module.bias)


@register_family(
    "efficientnet",
    pattern=r"efficientnet-b(?P<variant>\d)",
    description="EfficientNet-B0..B7: B0 blocks, compound scaling, swish, squeeze-excite",
    examples=[f"efficientnet-b{i}" for i in range(8)],
    default_dataset="imagenet",
    resolve=_resolve,
)
def efficientnet(
    variant: int = 0,
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
    input_size: int | None = None,
    width_mult: float | None = None,
    depth_mult: float | None = None,
    dropout: float | None = None,
    drop_path: float = 0.2,
    stem_stride: int = 2,
    act: str = "swish",
    bn_eps: float = 1e-3,
    bn_momentum: float = 0.01,
    padding: str = "symmetric",
) -> nn.Module:
    if stem_stride not in (1, 2):
        raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
    blocks = scale_blocks([parse_block(b) for b in B0_BLOCKS], width_mult, depth_mult)
    model = MBConvNet(
        blocks,
        stem_channels=round_filters(32, width_mult),
        stem_stride=stem_stride,
        head_channels=round_filters(1280, width_mult),
        num_classes=num_classes,
        in_channels=in_channels,
        act=check_act(act),
        dropout=dropout,
        drop_path=drop_path,
        bn_eps=bn_eps,
        bn_momentum=bn_momentum,
        padding=check_padding(padding),
    )
    _init(model)
    return model
