"""lukemelas' efficientnet_pytorch (0.7.1) state dicts, `EfficientNet.from_name('efficientnet-bN')` for
B0..B7, renamed onto our `efficientnet-bN`.

Its modules have one name each, so renaming is a table: `_conv_stem` / `_bn0` the stem, `_blocks.I`
the flat list of blocks (`_expand_conv` / `_bn0`, `_depthwise_conv` / `_bn1`, `_se_reduce` /
`_se_expand`, `_project_conv` / `_bn2`), `_conv_head` / `_bn1` the head, `_fc` the classifier. The
variant is the one with the checkpoint's stem width, block count and head width.

Two arguments make our forward pass its forward pass, bit for bit. `padding="same"`: its convs pad
the TensorFlow way, with the odd pixel at the bottom and right. Its static padding is fixed for the
image size it was built with (the variant's resolution unless `image_size` was given); ours is
computed from each input's size, which gives the same padding at that size (and TensorFlow's at any
other). `act="swish_mul"`: its default MemoryEfficientSwish computes x * sigmoid(x), which rounds
differently from nn.SiLU (after `set_swish(memory_efficient=False)` it is nn.SiLU: `act="swish"`).
BN eps 1e-3 and momentum 0.01 are ours too.
"""

from __future__ import annotations

import re

from mncli.errors import BadInput
from mncli.models.efficientnet import VARIANTS, variant_from_sizes
from mncli.models.layouts import Converted, Layout, State, register_layout
from mncli.models.layouts.torchvision import check_fits, rename_keys, require

LAYOUT = "efficientnet-pytorch"

_TOP_MODULES = {
    "_conv_stem": "stem.conv",
    "_bn0": "stem.bn",
    "_conv_head": "head.conv",
    "_bn1": "head.bn",
    "_fc": "classifier",
}
_BLOCK_MODULES = {
    "_expand_conv": "expand",
    "_bn0": "expand_bn",
    "_depthwise_conv": "dw",
    "_bn1": "dw_bn",
    "_se_reduce": "se.reduce",
    "_se_expand": "se.expand",
    "_project_conv": "project",
    "_bn2": "project_bn",
}
_TOP_KEY = re.compile(r"(_\w+)\.(\w+)")
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(_\w+)\.(\w+)")


def _rename(key: str) -> str | None:
    block = _BLOCK_KEY.fullmatch(key)
    if block:
        module = _BLOCK_MODULES.get(block[2])
        return f"blocks.{int(block[1])}.{module}.{block[3]}" if module else None
    top = _TOP_KEY.fullmatch(key)
    if top and top[1] in _TOP_MODULES:
        return f"{_TOP_MODULES[top[1]]}.{top[2]}"
    return None


def _detect(state: State) -> bool:
    return all(
        key in state for key in ("_conv_stem.weight", "_blocks.0._depthwise_conv.weight", "_conv_head.weight")
    )


def _convert(state: State, config: dict | None) -> Converted:
    renamed = rename_keys(state, LAYOUT, _rename)
    stem = require(state, "_conv_stem.weight", LAYOUT, "the stem conv")
    head = require(state, "_conv_head.weight", LAYOUT, "the head conv")
    if "_fc.weight" not in state:
        raise BadInput(
            f"{LAYOUT} checkpoint has no _fc.weight (the classifier)",
            hint="a model built with include_top=False has no classifier; give one built with it",
        )
    num_blocks = len({m[1] for key in state if (m := _BLOCK_KEY.fullmatch(key))})
    sizes = (stem.shape[0], num_blocks, head.shape[0])
    variant = variant_from_sizes(LAYOUT, *sizes)
    arch = f"efficientnet-b{variant}"
    args = {
        "num_classes": int(state["_fc.weight"].shape[0]),
        "in_channels": int(stem.shape[1]),
        "padding": "same",
        "act": "swish_mul",
    }
    check_fits(LAYOUT, arch, args, renamed)
    resolution = VARIANTS[variant][2]
    notes = [
        f"efficientnet_pytorch efficientnet-b{variant}: stem {sizes[0]}, {sizes[1]} blocks, head {sizes[2]}",
        f"padding=same (TensorFlow's, from each input's size): efficientnet_pytorch's own padding at the "
        f"image size its model was built with ({resolution} px unless image_size was given)",
        "act=swish_mul (x * sigmoid(x), its MemoryEfficientSwish); use act=swish if it ran with "
        "set_swish(memory_efficient=False)",
    ]
    return Converted(arch=arch, args=args, state=renamed, notes=notes)


register_layout(
    Layout(
        name=LAYOUT,
        description="lukemelas efficientnet_pytorch EfficientNet-B0..B7 -> efficientnet-bN, TF padding",
        detect=_detect,
        convert=_convert,
    )
)
