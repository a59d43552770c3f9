"""EC2T's CIFAR MicroNet checkpoints (d-becking/neurips-2019-micronet-challenge, d-becking/efficientCNNs) onto
our `micronet-cifar`, with the arguments inferred from the shapes.

micronet-cifar was written to EC2T's module names (`conv1`, `bn1`, `layerX.Y.{bn1,conv1,bn2,conv2,bn3}`,
`layerX.Y.shortcut.{0,1}`, `linear`), so the keys need no renaming, and a state dict of ours reads the
same: what an EC2T checkpoint lacks is the architecture. EC2T builds `micronet(d, w)` from command-line
multipliers (d ** phi, w ** phi) and writes them to file names and log files only, so here they come from
the shapes: the `layerX.Y` keys give the blocks per stage (depth_mult = blocks / 7 when that rounds back),
the three stage widths a width_mult whose rounding gives all three, `linear` the classes, `conv1` the input
channels. `pool="window"` is EC2T's final `F.avg_pool2d`, for identical logits.

How EC2T saves (model_compound_scaling/main_grid_search.py `grid_search`, model_quantization/quantizer.py
`train_quantization`): best models as a bare `model.state_dict()` (best_model.pt, `module.`-prefixed when
trained on several GPUs; Ternary_best_acc.pt), checkpoints as `{"state_dict": ..., "optimizer_state_dict":
..., ...}` (checkpoint.pt). Ternarization writes the ternary values (w_p, 0, -w_n) into the weights of the
block convs themselves; its centroids, full-precision latent copies and assignments live beside the state
dict (checkpoint.pt's `centroids`, `fp_update`, `assignment_list`; centroids.pt, assignments.pt), so the
state dict is the deployed network, taken as it is.
"""

from __future__ import annotations

import re

import torch

from mncli.errors import BadInput
from mncli.models.blocks import round_filters
from mncli.models.checkpoint import compare_state_dict
from mncli.models.layouts import Converted, Layout, State, register_layout
from mncli.models.micronet import BASE_BLOCKS, BASE_WIDTHS, micronet_blocks, micronet_widths
from mncli.models.registry import create_model

# The stem, the classifier and the first pre-activation block with its third BN (a CIFAR ResNet's blocks
# have two; a bottleneck block's third BN follows a conv3).
SIGNATURE = ("conv1.weight", "bn1.running_mean", "linear.weight") + tuple(
    f"layer1.0.{name}.weight" for name in ("bn1", "conv1", "bn2", "conv2", "bn3")
)
BLOCK_KEY = re.compile(r"layer(\d+)\.(\d+)\.")
TERNARY_LAYER = re.compile(r"layer\d+\.\d+\.conv[12]\.weight")  # what EC2T ternarizes ('.conv' in the name)


def detect(state: State) -> bool:
    return all(key in state for key in SIGNATURE) and "layer1.0.conv3.weight" not in state


def _blocks_per_stage(state: State) -> int:
    stages: dict[int, set[int]] = {}
    for key in state:
        match = BLOCK_KEY.match(key)
        if match:
            stages.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    if sorted(stages) != [1, 2, 3]:
        raise BadInput(
            f"the checkpoint has stages layer{', layer'.join(map(str, sorted(stages)))}; EC2T's CIFAR "
            "MicroNet has layer1..layer3 (its ImageNet MicroNet has no mncli family)"
        )
    counts = {stage: len(blocks) for stage, blocks in sorted(stages.items())}
    if len(set(counts.values())) != 1 or any(stages[s] != set(range(counts[s])) for s in stages):
        raise BadInput(
            f"blocks per stage {list(counts.values())}: EC2T's MicroNet has the same number in each"
        )
    return counts[1]


def _depth_mult(blocks: int) -> float:
    depth = blocks / BASE_BLOCKS
    # ceil(7 * (blocks / 7)) may round up past `blocks`; half a block less never does
    return depth if micronet_blocks(depth) == blocks else (blocks - 0.5) / BASE_BLOCKS


def _lowest_mult(base: int, width: int) -> float:
    """The smallest width_mult from which `base` channels round to `width` or more (rounding never falls as
    the multiplier grows)."""
    low, high = 0.0, width / base + 1.0
    for _ in range(60):
        middle = (low + high) / 2
        if round_filters(base, middle) >= width:
            high = middle
        else:
            low = middle
    return high


def _width_mult(widths: list[int]) -> float:
    """A width_mult whose rounding gives all three stage widths: the ratio of a width to its base when one
    does, else the middle of the multipliers that give each."""
    low = max(_lowest_mult(base, width) for base, width in zip(BASE_WIDTHS, widths, strict=True))
    high = min(_lowest_mult(base, width + 1) for base, width in zip(BASE_WIDTHS, widths, strict=True))
    ratios = [width / base for base, width in reversed(list(zip(BASE_WIDTHS, widths, strict=True)))]
    for candidate in [*ratios, (low + high) / 2]:
        if micronet_widths(candidate) == widths:
            return candidate
    raise BadInput(
        f"stage widths {widths}: no width_mult of micronet-cifar (rounding 16/32/64 to multiples of 8) "
        "gives them"
    )


def _is_ternary(weight: torch.Tensor) -> bool:
    """Whether every value is the tensor's minimum, zero or its maximum, with the minimum at most zero
    and the maximum at least zero: -w_n, 0, w_p."""
    low, high = weight.min(), weight.max()
    return bool(low <= 0 <= high and ((weight == low) | (weight == 0) | (weight == high)).all())


def convert(state: State, config: dict | None) -> Converted:
    if config is not None:
        raise BadInput("the ec2t layout takes no side file", hint="leave out the config file")
    blocks = _blocks_per_stage(state)
    widths = [int(state[f"layer{stage}.0.conv1.weight"].shape[0]) for stage in (1, 2, 3)]
    args = {
        "depth_mult": _depth_mult(blocks),
        "width_mult": _width_mult(widths),
        "dropout": 0.2,  # EC2T's CIFAR blocks
        "pool": "window",
        "num_classes": int(state["linear.weight"].shape[0]),
        "in_channels": int(state["conv1.weight"].shape[1]),
        "input_size": 32,
    }
    with torch.device("meta"):
        model = create_model("micronet-cifar", **args)
    problems = compare_state_dict(model, state)
    if problems["mismatched"]:
        item = problems["mismatched"][0]
        raise BadInput(
            f"{item['key']} is {item['checkpoint']} in the checkpoint, {item['model']} in EC2T's MicroNet "
            f"of {blocks} blocks per stage, widths {widths}",
            hint="only EC2T's 3x3 CIFAR MicroNet imports",
        )
    for kind in ("missing", "unexpected"):
        if problems[kind]:
            raise BadInput(f"{problems[kind][0]} is {kind} for EC2T's CIFAR MicroNet")
    notes = [f"{blocks} blocks per stage, widths {widths}: EC2T's checkpoints do not record the multipliers"]
    convs = [key for key in state if TERNARY_LAYER.fullmatch(key)]
    ternary = sum(_is_ternary(state[key]) for key in convs)
    if ternary:
        notes.append(
            f"{ternary} of {len(convs)} block convs hold ternary values (w_p, 0, -w_n), taken as plain "
            "weights; EC2T's latent full-precision copies are outside the state dict and not imported"
        )
    return Converted(arch="micronet-cifar", args=args, state=dict(state), notes=notes)


register_layout(
    Layout(
        name="ec2t",
        description="EC2T's CIFAR MicroNet (d-becking/neurips-2019-micronet-challenge) -> micronet-cifar",
        detect=detect,
        convert=convert,
    )
)
