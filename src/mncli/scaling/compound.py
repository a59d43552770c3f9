"""EfficientNet compound scaling: depth d = alpha^phi, width w = beta^phi, resolution r = gamma^phi.

Channels use EfficientNet's round_filters and repeats its round_repeats (the zoo's functions, so a
scaled `mbconv` network and `efficientnet-bN` round identically). The default grid is EC2T's CIFAR grid.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

from mncli.errors import BadInput
from mncli.models.blocks import round_filters, round_repeats

__all__ = [
    "DEFAULT_GRID",
    "GridPoint",
    "grid_points",
    "parse_grid",
    "round_filters",
    "round_repeats",
    "scale_arch",
    "scale_mbconv_blocks",
]

# EC2T's CIFAR grid of (alpha, beta) under alpha * beta^2 ~= 2 (resolution fixed at 32 px), phi 3.5.
DEFAULT_GRID: list[tuple[float, float]] = [
    (1.0, 1.0),
    (1.9, 1.0),
    (1.7, 1.1),
    (1.6, 1.1),
    (1.4, 1.2),
    (1.2, 1.3),
    (1.0, 1.4),
]
# EfficientNet-B0's grid search result, the default for a single point.
EFFICIENTNET_ALPHA, EFFICIENTNET_BETA, EFFICIENTNET_GAMMA = 1.2, 1.1, 1.15
# Datasets whose images come at one size: resolution is not a free multiplier there.
FIXED_RESOLUTION = {"fashion-mnist", "mnist", "cifar10", "cifar100", "synthetic"}


@dataclass(frozen=True)
class GridPoint:
    index: int
    alpha: float
    beta: float
    gamma: float

    def multipliers(self, phi: float) -> tuple[float, float, float]:
        """(depth, width, resolution) = (alpha^phi, beta^phi, gamma^phi)."""
        return self.alpha**phi, self.beta**phi, self.gamma**phi

    def to_dict(self, phi: float) -> dict:
        depth, width, resolution = self.multipliers(phi)
        return {
            "point": self.index,
            "alpha": self.alpha,
            "beta": self.beta,
            "gamma": self.gamma,
            "depth_mult": round(depth, 6),
            "width_mult": round(width, 6),
            "resolution_mult": round(resolution, 6),
        }


def parse_grid(text: str | None) -> list[tuple[float, ...]]:
    """`"1.4,1.2; 1.2,1.3"` (alpha,beta[,gamma] per point, separated by ; or spaces) -> tuples."""
    if text is None or not text.strip():
        return [tuple(p) for p in DEFAULT_GRID]
    points = []
    for chunk in text.replace(";", " ").split():
        try:
            values = tuple(float(v) for v in chunk.split(",") if v.strip())
        except ValueError:
            values = ()
        if len(values) not in (2, 3) or any(not (v > 0 and math.isfinite(v)) for v in values):
            raise BadInput(
                f"bad grid point {chunk!r}",
                hint='give alpha,beta[,gamma] per point, e.g. --grid-points "1.4,1.2 1.2,1.3 1.0,1.4"',
            )
        points.append(values)
    return points


def grid_points(raw: list[tuple[float, ...]]) -> list[GridPoint]:
    return [GridPoint(i, p[0], p[1], p[2] if len(p) > 2 else 1.0) for i, p in enumerate(raw)]


def _stages(blocks: list[dict]) -> list[list[int]]:
    """Indices of the block strings of each stage: a stride-2 block or a new width starts a stage."""
    stages: list[list[int]] = []
    for i, block in enumerate(blocks):
        if stages and block["stride"] == 1 and block["channels"] == blocks[stages[-1][-1]]["channels"]:
            stages[-1].append(i)
        else:
            stages.append([i])
    return stages


def scale_mbconv_blocks(blocks: list[str], depth: float, depth_mult: float = 1.0) -> list[str]:
    """Repeats of an `mbconv` network scaled per stage, as EfficientNet scales its stages.

    A searched network writes one string per chosen block, so rounding each string's repeats up on its
    own would at least double every stage; instead a stage of n blocks gets ceil(depth * n), the added
    blocks being copies of the stage's last block. `depth_mult` (the arch's own) is applied first."""
    from mncli.models.mbconv import format_block, parse_block

    parsed = [parse_block(b) for b in blocks]
    parsed = [
        {**b, "repeats": round_repeats(b["repeats"], depth_mult)} for b in parsed if b["type"] != "zero"
    ]
    for stage in _stages(parsed):
        total = sum(parsed[i]["repeats"] for i in stage)
        parsed[stage[-1]]["repeats"] += round_repeats(total, depth) - total
    return [format_block(b) for b in parsed]


def _base_name(name: str) -> str:
    """`mobilenetv2-1.4` fixes its width in the name; the scaled arch carries it as an argument."""
    if name.startswith("mobilenetv2"):
        return "mobilenetv2-cifar" if name.startswith("mobilenetv2-cifar") else "mobilenetv2"
    return name


def scale_arch(arch: dict, depth: float, width: float, resolution: float = 1.0) -> dict:
    """The architecture multiplied by (depth, width, resolution); BadInput for a family that cannot be."""
    from mncli.models import resolve_args

    name, args = arch["name"], copy.deepcopy(arch.get("args", {}))
    family, resolved = resolve_args(name, args)
    knobs = set(family.defaults)
    missing = [k for k, m in (("depth_mult", depth), ("width_mult", width)) if m != 1.0 and k not in knobs]
    if missing:
        raise BadInput(
            f"{name} cannot be scaled: it has no {' or '.join(missing)} argument",
            hint="scale works on mbconv, micronet-cifar, efficientnet-bN and mobilenetv2 architectures",
        )
    new_name = _base_name(name)
    if family.name == "mbconv":
        resolved["blocks"] = scale_mbconv_blocks(
            resolved["blocks"], depth, float(resolved.get("depth_mult", 1.0))
        )
        resolved["depth_mult"] = 1.0
    elif depth != 1.0:
        resolved["depth_mult"] = float(resolved["depth_mult"]) * depth
    if width != 1.0:
        resolved["width_mult"] = float(resolved["width_mult"]) * width
    if resolution != 1.0:
        resolved["input_size"] = int(round(int(resolved["input_size"]) * resolution))
    _, final = resolve_args(new_name, resolved)
    return {"name": new_name, "args": final}
