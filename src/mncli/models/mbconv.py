"""Networks of inverted-residual blocks described by block strings: what `search` emits and `scale`
multiplies, and the body of MobileNetV2 and EfficientNet.

A block string (EfficientNet / ProxylessNAS style) is `ir_r2_k5_s2_e6_c40`, optionally with `_se0.25`:
2 repeats of an MBConv with a 5x5 depthwise conv, stride 2 on the first repeat, expansion 6, 40 output
channels, squeeze-excite at 0.25 of the block's input channels. `fu_...` (same fields) is a
Fused-MBConv (EfficientNetV2): a dense k x k conv in place of the 1x1 expand and the depthwise conv;
`fu_r1_k3_s2_e1_c24` is a plain 3x3 stride-2 conv-BN-act. `zero` is a skipped block (identity).
Width and depth multipliers use EfficientNet rounding (round_filters / round_repeats).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from mncli.errors import BadInput
from mncli.models.blocks import (
    ConvBnAct,
    FusedMBConvBlock,
    MBConvBlock,
    check_act,
    init_weights,
    round_filters,
    round_repeats,
)
from mncli.models.registry import register_family

_FIELDS = {"r": "repeats", "k": "kernel", "s": "stride", "e": "expand", "c": "channels", "se": "se_ratio"}
BLOCK_TYPES = {"ir": MBConvBlock, "fu": FusedMBConvBlock}
_TOKEN = re.compile(r"(se|r|k|s|e|c)(\d+(?:\.\d+)?)")


def parse_block(text: str) -> dict:
    """`ir_r2_k5_s2_e6_c40_se0.25` -> {"type": "ir", "repeats": 2, "kernel": 5, "stride": 2, "expand": 6,
    "channels": 40, "se_ratio": 0.25}; `zero` -> {"type": "zero"}."""
    if not isinstance(text, str):
        raise BadInput(f"a block string must be a string, got {text!r}")
    parts = text.strip().lower().split("_")
    if parts == ["zero"]:
        return {"type": "zero"}
    example = "ir_r2_k5_s2_e6_c40 or fu_r1_k3_s2_e1_c24 (optionally _se0.25)"
    if parts[0] not in BLOCK_TYPES:
        raise BadInput(
            f"bad block string {text!r}: must start with ir_ or fu_, or be zero", hint=f"e.g. {example}"
        )
    block: dict = {"type": parts[0], "se_ratio": 0.0}
    for part in parts[1:]:
        match = _TOKEN.fullmatch(part)
        if not match:
            raise BadInput(f"bad block string {text!r}: cannot read {part!r}", hint=f"e.g. {example}")
        key, value = _FIELDS[match.group(1)], float(match.group(2))
        block[key] = value if key in ("expand", "se_ratio") else int(value)
    missing = [f"{k}" for k, name in _FIELDS.items() if k != "se" and name not in block]
    if missing:
        raise BadInput(f"bad block string {text!r}: missing {', '.join(missing)}", hint=f"e.g. {example}")
    if block["expand"].is_integer():
        block["expand"] = int(block["expand"])
    problems = []
    if block["repeats"] < 1:
        problems.append("repeats must be >= 1")
    if block["kernel"] % 2 != 1:
        problems.append("kernel must be odd")
    if block["stride"] not in (1, 2):
        problems.append("stride must be 1 or 2")
    if block["expand"] <= 0 or block["channels"] < 1:
        problems.append("expand and channels must be positive")
    if not 0.0 <= block["se_ratio"] <= 1.0:
        problems.append("se ratio must be in [0, 1]")
    if problems:
        raise BadInput(f"bad block string {text!r}: {'; '.join(problems)}")
    return block


def _number(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:g}"


def format_block(block: dict | None = None, **fields) -> str:
    """The canonical string of a block: inverse of `parse_block` (`format_block(parse_block(s))`)."""
    block = {**(block or {}), **fields}
    if block.get("type") == "zero":
        return "zero"
    text = "{}_r{}_k{}_s{}_e{}_c{}".format(
        block.get("type", "ir"),
        int(block.get("repeats", 1)),
        int(block["kernel"]),
        int(block["stride"]),
        _number(block["expand"]),
        int(block["channels"]),
    )
    if block.get("se_ratio"):
        text += f"_se{_number(block['se_ratio'])}"
    return text


def scale_blocks(blocks: list[dict], width_mult: float, depth_mult: float) -> list[dict]:
    """Channels by round_filters and repeats by round_repeats (EfficientNet rounding)."""
    scaled = []
    for block in blocks:
        if block["type"] == "zero":
            scaled.append(dict(block))
            continue
        scaled.append(
            {
                **block,
                "channels": round_filters(block["channels"], width_mult),
                "repeats": round_repeats(block["repeats"], depth_mult),
            }
        )
    return scaled


class MBConvNet(nn.Module):
    """`stem` (conv-BN-act) -> `blocks.N` (MBConvBlock, flat) -> `head` (1x1 conv-BN-act, optional) ->
    pool -> dropout -> `classifier`. Channel numbers here are final (already scaled); `padding`
    ("symmetric" or "same", see blocks.py) is every conv's."""

    def __init__(
        self,
        blocks: list[dict],
        *,
        stem_channels: int,
        stem_stride: int,
        head_channels: int,
        num_classes: int,
        in_channels: int,
        act: str,
        dropout: float = 0.0,
        drop_path: float = 0.0,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        padding: str = "symmetric",
    ):
        super().__init__()
        bn = {"bn_eps": bn_eps, "bn_momentum": bn_momentum}
        self.stem = ConvBnAct(in_channels, stem_channels, 3, stem_stride, act, **bn, padding=padding)
        layers = []
        c_in = stem_channels
        total = sum(b["repeats"] for b in blocks if b["type"] != "zero")
        for block in blocks:
            if block["type"] == "zero":
                continue
            for i in range(block["repeats"]):
                layers.append(
                    BLOCK_TYPES[block["type"]](
                        c_in,
                        block["channels"],
                        block["kernel"],
                        block["stride"] if i == 0 else 1,
                        block["expand"],
                        block.get("se_ratio", 0.0),
                        act,
                        drop_path=drop_path * len(layers) / max(total, 1),
                        **bn,
                        padding=padding,
                    )
                )
                c_in = block["channels"]
        if not layers:
            raise ValueError("an MBConv network needs at least one ir_ or fu_ block")
        self.blocks = nn.Sequential(*layers)
        if head_channels > 0:
            self.head = ConvBnAct(c_in, head_channels, 1, 1, act, **bn)
            c_in = head_channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(self.stem(x))
        if hasattr(self, "head"):
            out = self.head(out)
        return self.classifier(self.dropout(self.flatten(self.pool(out))))


# MobileNetV2's body on a CIFAR stem: a sensible default for search space and scaling experiments.
DEFAULT_BLOCKS = [
    "ir_r1_k3_s1_e1_c16",
    "ir_r2_k3_s1_e6_c24",
    "ir_r3_k3_s2_e6_c32",
    "ir_r4_k3_s2_e6_c64",
    "ir_r3_k3_s1_e6_c96",
    "ir_r3_k3_s2_e6_c160",
    "ir_r1_k3_s1_e6_c320",
]


def _canonical_blocks(args: dict) -> dict:
    args["blocks"] = [format_block(parse_block(b)) for b in args["blocks"]]
    return args


@register_family(
    "mbconv",
    pattern=r"mbconv",
    description="MBConv network from block strings (search output; scale with depth_mult/width_mult)",
    examples=["mbconv"],
    default_dataset=lambda args: "imagenet" if args["input_size"] >= 128 else "cifar100",
    resolve=_canonical_blocks,
)
def mbconv(
    *,
    num_classes: int = 100,
    in_channels: int = 3,
    input_size: int = 32,
    blocks: list[str] = DEFAULT_BLOCKS,  # noqa: B006 - never mutated; recorded in model.arch
    stem_channels: int = 32,
    stem_stride: int = 1,
    head_channels: int = 1280,
    act: str = "relu6",
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    dropout: float = 0.0,
    drop_path: float = 0.0,
    bn_eps: float = 1e-3,
    bn_momentum: float = 0.1,
) -> nn.Module:
    if width_mult <= 0 or depth_mult <= 0:
        raise ValueError("width_mult and depth_mult must be positive")
    if stem_stride not in (1, 2):
        raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
    parsed = scale_blocks([parse_block(b) for b in blocks], width_mult, depth_mult)
    model = MBConvNet(
        parsed,
        stem_channels=round_filters(stem_channels, width_mult),
        stem_stride=stem_stride,
        head_channels=round_filters(head_channels, width_mult) if head_channels > 0 else 0,
        num_classes=num_classes,
        in_channels=in_channels,
        act=check_act(act),
        dropout=dropout,
        drop_path=drop_path,
        bn_eps=bn_eps,
        bn_momentum=bn_momentum,
    )
    init_weights(model)
    return model
