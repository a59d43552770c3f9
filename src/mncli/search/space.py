"""The search space: stem, stages of searchable MBConv blocks, head, and the candidate operations.

A candidate is `kK_eE` (an MBConv block with a K x K depthwise kernel and expansion E), `fu_kK_eE` (a
Fused-MBConv: one dense K x K conv instead of the 1x1 expand and the depthwise conv; `fu_k3_e1` is a
plain 3x3 conv) or `zero` (the block is skipped: it becomes its identity shortcut, allowed only where
stride is 1 and c_in == c_out).

The layout (stem, widths, depths, strides, head) is the dataset's default (`default_space`) or a named
space (`NAMED_SPACES`, `--space NAME`); options given on their own override either.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from mncli.errors import BadInput

DEFAULT_OPS = ["k3_e3", "k3_e6", "k5_e3", "k5_e6", "k7_e3", "k7_e6", "zero"]
_OP = re.compile(r"(fu_)?k(\d+)_e(\d+)")


@dataclass(frozen=True)
class Candidate:
    kernel: int
    expansion: int
    fused: bool = False

    @property
    def name(self) -> str:
        return f"{'fu_' if self.fused else ''}k{self.kernel}_e{self.expansion}"

    @property
    def block_type(self) -> str:
        """The `mbconv` block-string type of this candidate."""
        return "fu" if self.fused else "ir"


ZERO = "zero"


def parse_op(text: str) -> Candidate | str:
    """`k5_e6` -> Candidate(5, 6); `fu_k3_e1` -> Candidate(3, 1, fused=True); `zero` -> "zero"; anything
    else is BadInput."""
    op = text.strip().lower()
    if op == ZERO:
        return ZERO
    match = _OP.fullmatch(op)
    if not match or int(match.group(2)) % 2 == 0 or int(match.group(3)) < 1:
        raise BadInput(
            f"unknown candidate op {text!r}",
            hint="candidates are kK_eE (MBConv) or fu_kK_eE (Fused-MBConv) with an odd kernel K and "
            "expansion E (k3_e3, k5_e6, fu_k3_e1, ...) or zero",
        )
    return Candidate(int(match.group(2)), int(match.group(3)), fused=bool(match.group(1)))


def check_ops(ops: list[str]) -> list[str]:
    """The candidate ops in canonical spelling; BadInput for an unknown or repeated op, or for no block
    op besides zero."""
    parsed = [parse_op(o) for o in ops]
    if not any(isinstance(p, Candidate) for p in parsed):
        raise BadInput("the candidate ops need at least one block op (kK_eE, fu_kK_eE) besides zero")
    names = [p if isinstance(p, str) else p.name for p in parsed]
    if len(set(names)) != len(names):
        raise BadInput(f"candidate ops repeat: {names}")
    return names


@dataclass
class SearchSpace:
    """Everything that fixes the super-network; recorded in the manifest."""

    in_channels: int
    input_size: int
    num_classes: int
    stem_channels: int
    stem_stride: int
    widths: list[int]
    repeats: list[int]
    strides: list[int]
    ops: list[str] = field(default_factory=lambda: list(DEFAULT_OPS))
    head_channels: int = 0
    first_block: str | None = None  # a fixed, unsearched block after the stem (MobileNetV2's e1 block)
    se_ratio: float = 0.0  # squeeze-excite in every candidate, as a fraction of its input channels
    act: str = "relu6"  # the activation of stem, candidates and head (ProxylessNAS: ReLU6)

    def __post_init__(self) -> None:
        if not (len(self.widths) == len(self.repeats) == len(self.strides)) or not self.widths:
            raise BadInput(
                f"--widths, --repeats and --strides need one value per stage "
                f"(got {len(self.widths)}, {len(self.repeats)}, {len(self.strides)})"
            )
        if any(w < 1 for w in self.widths) or any(r < 1 for r in self.repeats):
            raise BadInput("stage widths and repeats must be positive")
        if any(s not in (1, 2) for s in self.strides) or self.stem_stride not in (1, 2):
            raise BadInput(
                "--strides and --stem-stride take 1 or 2", hint="e.g. --strides 2,2,2,1 --stem-stride 1"
            )
        if not 0.0 <= self.se_ratio <= 1.0:
            raise BadInput(
                f"--se-ratio must be in [0, 1], got {self.se_ratio:g}", hint="e.g. --se-ratio 0.25"
            )
        from mncli.models.blocks import check_act

        try:  # the zoo's own check, so the search accepts exactly what the derived network can build
            self.act = check_act(self.act)
        except ValueError as error:
            raise BadInput(str(error)) from None
        self.ops = check_ops(self.ops)

    @property
    def candidates(self) -> list[Candidate]:
        return [parse_op(o) for o in self.ops if o != ZERO]

    def blocks(self) -> list[dict]:
        """One entry per searchable block: c_in, c_out, stride and the names of its choices."""
        blocks = []
        c_in = self.stem_channels if self.first_block is None else _block_channels(self.first_block)
        for width, repeats, stride in zip(self.widths, self.repeats, self.strides, strict=True):
            for i in range(repeats):
                s = stride if i == 0 else 1
                skippable = s == 1 and c_in == width
                choices = [o for o in self.ops if o != ZERO or skippable]
                blocks.append({"c_in": c_in, "c_out": width, "stride": s, "choices": choices})
                c_in = width
        return blocks

    def to_dict(self) -> dict:
        return asdict(self)


def _block_channels(block: str) -> int:
    match = re.search(r"_c(\d+)", block)
    if not match:
        raise BadInput(f"block string {block!r} has no output channels (_cN)")
    return int(match.group(1))


# Named layouts. "mit-cifar100": ProxylessNAS's mobile super-network (mit-han-lab/proxylessnas,
# search/imagenet_arch_search.py: widths 24,40,80,96,192,320, blocks 4,4,4,4,4,1, strides 2,2,2,1,2,1,
# stem 32, first block 3x3 MBConv1 to 16, head 1280) at its width multiplier 1.4 (make_divisible by
# 8: 32,56,112,136,272,448, stem 48, first block 24, head 1280 x 1.4), on a CIFAR stem: the stem and
# the first stage at stride 1, so 32 px ends at 4 x 4 as in MobileNetV2-CIFAR. The MIT seed's CIFAR-100
# network (5.77M parameters; a tree-cell search that was never released) fits inside: the networks
# derivable here have 1.9M to 7.5M parameters at 100 classes.
NAMED_SPACES: dict[str, dict] = {
    "mit-cifar100": {
        "stem_channels": 48,
        "stem_stride": 1,
        "first_block": "ir_r1_k3_s1_e1_c24",
        "widths": [32, 56, 112, 136, 272, 448],
        "repeats": [4, 4, 4, 4, 4, 1],
        "strides": [1, 2, 2, 1, 2, 1],
        "head_channels": 1792,
    },
}


def named_space(name: str) -> dict:
    """The layout of a named space (a copy); BadInput naming the known ones for any other name."""
    layout = NAMED_SPACES.get(str(name).strip().lower())
    if layout is None:
        raise BadInput(f"unknown search space {name!r}", hint=f"known spaces: {', '.join(NAMED_SPACES)}")
    return {k: list(v) if isinstance(v, list) else v for k, v in layout.items()}


def default_space(in_channels: int, input_size: int, num_classes: int) -> dict:
    """Stem and stages sized for the dataset. Small images keep their resolution (stride-1 stem):
    28 px (Fashion-MNIST, MNIST) gets a narrow space of roughly 2M-20M ops, 32 px (CIFAR) MobileNetV2's
    CIFAR layout; ImageNet-size inputs get ProxylessNAS's mobile layout (stride-2 stem, 224 px)."""
    if input_size <= 28:
        return {
            "stem_channels": 8,
            "stem_stride": 1,
            "first_block": None,
            "widths": [16, 32, 48, 64],
            "repeats": [2, 3, 3, 2],
            "strides": [2, 2, 2, 1],
            "head_channels": 0,
        }
    if input_size <= 64:
        return {
            "stem_channels": 32,
            "stem_stride": 1,
            "first_block": "ir_r1_k3_s1_e1_c16",
            "widths": [24, 32, 64, 96, 160],
            "repeats": [2, 3, 4, 3, 3],
            "strides": [1, 2, 2, 1, 2],
            "head_channels": 1280,
        }
    return {
        "stem_channels": 32,
        "stem_stride": 2,
        "first_block": "ir_r1_k3_s1_e1_c16",
        "widths": [32, 40, 80, 96, 192, 320],
        "repeats": [4, 4, 4, 4, 4, 1],
        "strides": [2, 2, 2, 1, 2, 1],
        "head_channels": 1280,
    }
