"""torchvision's EfficientNet-B0..B7 and MobileNetV2 state dicts, renamed onto `efficientnet-bN` and
`mobilenetv2`.

torchvision names its modules by position. EfficientNet: `features.0` is the stem (conv `0`, BN `1`),
`features.S.J.block.I` the I-th unit of block J of stage S (conv-BN units `I.0` / `I.1`, the
squeeze-excite's `I.fc1` / `I.fc2`; the first unit, the 1x1 expansion, is absent when a block does not
expand), the last `features.N` the 1x1 head, `classifier.1` the Linear. MobileNetV2 names its stem,
head and classifier alike; `features.I.conv` is block I (conv-BN units, then the projection conv and
its BN as plain modules). Our models have the same layers in the same order, with the same padding
and the same activations, so renaming is all a conversion does; blocks are numbered in torchvision's
order (stage, then block).

EfficientNet's variant is the one with the checkpoint's stem width, block count and head width; its BN
settings are torchvision's (B0-B4 keep PyTorch's eps 1e-5 and momentum 0.1, B5-B7 use 1e-3 and 0.01).
MobileNetV2's width multiplier is the simplest one (fewest decimals, then smallest) that gives every
layer its checkpoint's channel count: models with the same channel counts are the same model.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from mncli.errors import BadInput
from mncli.models.blocks import round_filters
from mncli.models.checkpoint import compare_state_dict
from mncli.models.efficientnet import variant_from_sizes
from mncli.models.layouts import Converted, Layout, State, register_layout
from mncli.models.mbconv import parse_block
from mncli.models.mobilenetv2 import BLOCKS as MOBILENETV2_BLOCKS
from mncli.models.registry import create_model

# torchvision's BatchNorm settings per EfficientNet variant: (eps, momentum).
TORCHVISION_BN = {v: (1e-5, 0.1) if v <= 4 else (1e-3, 0.01) for v in range(8)}

_EFFICIENTNET_BLOCK = re.compile(r"features\.(\d+)\.(\d+)\.block\.(\d+)\.(.+)")
_MOBILENETV2_BLOCK = re.compile(r"features\.(\d+)\.conv\.(\d+)\.(.+)")
# The stem's and the head's tensors: conv 0, BN 1.
_CONV_BN_UNIT = re.compile(
    r"features\.(\d+)\.([01])\.(weight|bias|running_mean|running_var|num_batches_tracked)"
)


def check_fits(layout: str, arch: str, args: dict, state: State) -> None:
    """BadInput unless `state` has exactly the keys and shapes of `arch` built with `args` (on the
    meta device: no memory is taken)."""
    with torch.device("meta"):
        model = create_model(arch, **args)
    problems = compare_state_dict(model, state)
    parts = [
        f"{len(problems[kind])} {kind} ({', '.join(problems[kind][:2])})"
        for kind in ("missing", "unexpected")
        if problems[kind]
    ]
    parts += [f"{m['key']} is {m['checkpoint']}, {m['model']} in {arch}" for m in problems["mismatched"][:2]]
    if parts:
        raise BadInput(
            f"{layout} checkpoint does not fit {arch} once renamed: {'; '.join(parts)}",
            hint="the checkpoint is truncated or not an unmodified model of this layout",
        )


def require(state: State, key: str, layout: str, what: str) -> torch.Tensor:
    """state[key], or BadInput saying the checkpoint lacks `what`."""
    if key not in state:
        raise BadInput(
            f"{layout} checkpoint has no {key} ({what})", hint="give the full state dict of the model"
        )
    return state[key]


def _unit(role: str, rest: str) -> str | None:
    """A key inside a torchvision conv-BN unit (`0.weight`, `1.running_var`) as ours for the unit
    `role` (`dw.weight`, `dw_bn.running_var`)."""
    index, _, tail = rest.partition(".")
    if not tail or index not in ("0", "1"):
        return None
    return f"{role}.{tail}" if index == "0" else f"{role}_bn.{tail}"


def _head_index(state: State) -> int:
    """The position of the head in `features`: the last conv-BN unit after the stem."""
    positions = [int(m[1]) for key in state if (m := _CONV_BN_UNIT.fullmatch(key)) and m[1] != "0"]
    return max(positions, default=-1)


def rename_keys(state: State, layout: str, rename: Callable[[str], str | None]) -> State:
    """`state` with every key renamed by `rename`; BadInput naming the keys it does not know (None)."""
    renamed, unknown = {}, []
    for key, tensor in state.items():
        ours = rename(key)
        if ours is None:
            unknown.append(key)
        else:
            renamed[ours] = tensor
    if unknown:
        raise BadInput(
            f"{layout} checkpoint has keys this layout does not know: {', '.join(unknown[:3])}"
            + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""),
            hint="give the state dict of an unmodified model of this layout",
        )
    return renamed


def _top_level(key: str, head: int) -> str | None:
    """Stem, head and classifier keys (the same in both families), else None."""
    if key.startswith("classifier.1."):
        return "classifier." + key[len("classifier.1.") :]
    unit = _CONV_BN_UNIT.fullmatch(key)
    if unit and int(unit[1]) in (0, head):
        module = "stem" if unit[1] == "0" else "head"
        return f"{module}.conv.{unit[3]}" if unit[2] == "0" else f"{module}.bn.{unit[3]}"
    return None


def _detect_efficientnet(state: State) -> bool:
    return all(
        key in state
        for key in ("features.0.0.weight", "features.1.0.block.1.fc1.weight", "classifier.1.weight")
    )


def _convert_efficientnet(state: State, config: dict | None) -> Converted:
    layout = "torchvision-efficientnet"
    positions = sorted({(int(m[1]), int(m[2])) for key in state if (m := _EFFICIENTNET_BLOCK.fullmatch(key))})
    flat = {position: index for index, position in enumerate(positions)}
    expands = {(s, j) for s, j in positions if f"features.{s}.{j}.block.3.0.weight" in state}
    head = _head_index(state)

    def rename(key: str) -> str | None:
        block = _EFFICIENTNET_BLOCK.fullmatch(key)
        if block is None:
            return _top_level(key, head)
        position = (int(block[1]), int(block[2]))
        roles = ["expand", "dw", "se", "project"] if position in expands else ["dw", "se", "project"]
        unit, rest = int(block[3]), block[4]
        if unit >= len(roles):
            return None
        prefix = f"blocks.{flat[position]}"
        if roles[unit] == "se":
            name, _, tail = rest.partition(".")
            se = {"fc1": "reduce", "fc2": "expand"}.get(name)
            return f"{prefix}.se.{se}.{tail}" if se and tail else None
        ours = _unit(roles[unit], rest)
        return f"{prefix}.{ours}" if ours else None

    stem = require(state, "features.0.0.weight", layout, "the stem conv")
    head_conv = require(state, f"features.{head}.0.weight", layout, "the head conv")
    classifier = require(state, "classifier.1.weight", layout, "the classifier")
    sizes = (stem.shape[0], len(positions), head_conv.shape[0])
    variant = variant_from_sizes(layout, *sizes)
    renamed = rename_keys(state, layout, rename)
    arch = f"efficientnet-b{variant}"
    bn_eps, bn_momentum = TORCHVISION_BN[variant]
    args = {
        "num_classes": int(classifier.shape[0]),
        "in_channels": int(stem.shape[1]),
        "bn_eps": bn_eps,
        "bn_momentum": bn_momentum,
    }
    check_fits(layout, arch, args, renamed)
    notes = [
        f"torchvision efficientnet_b{variant}: stem {sizes[0]}, {sizes[1]} blocks, head {sizes[2]}",
        f"torchvision's BatchNorm for B{variant}: bn_eps={bn_eps:g}, bn_momentum={bn_momentum:g}",
    ]
    return Converted(arch=arch, args=args, state=renamed, notes=notes)


_MOBILENETV2_STAGES = [parse_block(text) for text in MOBILENETV2_BLOCKS]


def _mobilenetv2_plan(width_mult: float) -> tuple[int, list[int], int]:
    """(stem channels, every block's output channels, head channels) of our mobilenetv2 at a width."""
    outs = []
    for stage in _MOBILENETV2_STAGES:
        outs += [round_filters(stage["channels"], width_mult)] * stage["repeats"]
    return round_filters(32, width_mult), outs, round_filters(1280 * max(1.0, width_mult), 1.0)


MAX_WIDTH = 8.0
_WIDTH_STEPS = (0.25, 0.05, 0.01, 0.001)  # coarsest first: the simplest multiplier that fits wins


def _mobilenetv2_width(plan: tuple[int, list[int], int]) -> float | None:
    for step in _WIDTH_STEPS:
        for i in range(1, round(MAX_WIDTH / step) + 1):
            width = round(i * step, 3)
            if _mobilenetv2_plan(width) == plan:
                return width
    return None


def _detect_mobilenetv2(state: State) -> bool:
    return all(
        key in state
        for key in (
            "features.0.0.weight",
            "features.1.conv.0.0.weight",
            "features.1.conv.1.weight",
            "classifier.1.weight",
        )
    )


def _convert_mobilenetv2(state: State, config: dict | None) -> Converted:
    layout = "torchvision-mobilenetv2"
    blocks = sorted({int(m[1]) for key in state if (m := _MOBILENETV2_BLOCK.fullmatch(key))})
    expected_blocks = len(_mobilenetv2_plan(1.0)[1])
    if blocks != list(range(1, expected_blocks + 1)):
        raise BadInput(
            f"{layout} checkpoint has {len(blocks)} inverted-residual blocks (features.N.conv); "
            f"torchvision's mobilenet_v2 has {expected_blocks}, at features.1..{expected_blocks}",
            hint="give the full state dict of torchvision.models.mobilenet_v2(...)",
        )
    expands = {i for i in blocks if f"features.{i}.conv.3.weight" in state}
    head = _head_index(state)

    def rename(key: str) -> str | None:
        block = _MOBILENETV2_BLOCK.fullmatch(key)
        if block is None:
            return _top_level(key, head)
        index, part, rest = int(block[1]), int(block[2]), block[3]
        units = ["expand", "dw"] if index in expands else ["dw"]
        plain = ["project", "project_bn"]
        prefix = f"blocks.{index - 1}"
        if part < len(units):
            ours = _unit(units[part], rest)
            return f"{prefix}.{ours}" if ours else None
        if part - len(units) < len(plain):
            return f"{prefix}.{plain[part - len(units)]}.{rest}"
        return None

    stem = require(state, "features.0.0.weight", layout, "the stem conv")
    head_conv = require(state, f"features.{head}.0.weight", layout, "the head conv")
    classifier = require(state, "classifier.1.weight", layout, "the classifier")
    projects = [
        require(state, f"features.{i}.conv.{2 if i in expands else 1}.weight", layout, "a projection conv")
        for i in blocks
    ]
    plan = (stem.shape[0], [p.shape[0] for p in projects], head_conv.shape[0])
    width = _mobilenetv2_width(plan)
    if width is None:
        raise BadInput(
            f"{layout} checkpoint's channels (stem {plan[0]}, blocks {plan[1][0]}..{plan[1][-1]}, head "
            f"{plan[2]}) match no width multiplier of mobilenetv2 up to {MAX_WIDTH:g}",
            hint="only torchvision's mobilenet_v2 with its default blocks and round_nearest=8 converts",
        )
    renamed = rename_keys(state, layout, rename)
    arch = "mobilenetv2"
    args = {"num_classes": int(classifier.shape[0]), "in_channels": int(stem.shape[1]), "width_mult": width}
    check_fits(layout, arch, args, renamed)
    notes = [f"torchvision mobilenet_v2: width_mult={width:g} gives every layer its channel count"]
    return Converted(arch=arch, args=args, state=renamed, notes=notes)


register_layout(
    Layout(
        name="torchvision-efficientnet",
        description="torchvision.models.efficientnet_b0 .. efficientnet_b7 -> efficientnet-bN",
        detect=_detect_efficientnet,
        convert=_convert_efficientnet,
    )
)
register_layout(
    Layout(
        name="torchvision-mobilenetv2",
        description="torchvision.models.mobilenet_v2 (any width_mult) -> mobilenetv2",
        detect=_detect_mobilenetv2,
        convert=_convert_mobilenetv2,
    )
)
