"""Channel groups for structured pruning, found by tracing the model's graph with torch.fx.

Every tensor in the graph carries a channel *space* (its dim 1). A dense conv or linear starts a new
space (it is the space's producer); batch norm, activations, pooling and depthwise convs keep the
space of their input; `a + b` joins the spaces of a and b (a residual group: pruning one channel
means pruning it from every member), `a * b` (squeeze-excite gating) joins them too. Anything the
analysis does not understand (concatenation, indexing, grouped convs, reshapes with constants,
the model input and output) freezes the spaces it touches, so they are never pruned.

A prunable group then lists every module that must shrink together: producers lose output
channels, batch norms and depthwise convs lose channels, consumers lose input channels (a linear
after a flatten loses the H*W features of each channel).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from mncli.compress.prune.trace import channel_order_kept, op_name, shape_of, trace

_SAME_SPACE_MODULES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
_SAME_SPACE_FUNCTIONS = {
    "relu", "relu_", "relu6", "hardtanh", "hardswish", "hardsigmoid", "sigmoid", "tanh", "silu",
    "gelu", "leaky_relu", "elu", "dropout", "dropout2d", "clamp", "clamp_", "clip", "contiguous",
    "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "neg", "abs",
    "float", "to", "detach", "sigmoid_", "hardswish_", "hardsigmoid_",
}  # fmt: skip
_JOIN_FUNCTIONS = {"add", "add_", "iadd", "sub", "sub_", "mul", "mul_", "imul", "div", "truediv"}
_RESIDUAL_FUNCTIONS = {"add", "add_", "iadd", "sub", "sub_"}
_FLATTEN_FUNCTIONS = {"flatten", "view", "reshape"}
_SHAPE_FUNCTIONS = {"size", "dim", "getattr"}


@dataclass
class ChannelGroup:
    """Modules sharing one channel space; they shrink together."""

    channels: int
    producers: list[str] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    depthwise: list[str] = field(default_factory=list)
    consumers: list[tuple[str, int]] = field(default_factory=list)  # (name, features per channel)
    residual: bool = False
    frozen: list[str] = field(default_factory=list)  # reasons this group may not be pruned

    @property
    def prunable(self) -> bool:
        return not self.frozen and bool(self.producers) and bool(self.consumers)


class _Spaces:
    """Union-find over channel spaces, with what belongs to each."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.info: list[dict] = []

    def new(self, frozen: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.info.append(
            {"producers": [], "norms": [], "depthwise": [], "consumers": [], "residual": False, "frozen": []}
        )
        if frozen:
            self.info[-1]["frozen"].append(frozen)
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int, residual: bool) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            for key in ("producers", "norms", "depthwise", "consumers", "frozen"):
                self.info[ra][key] += self.info[rb][key]
            self.info[ra]["residual"] |= self.info[rb]["residual"]
        self.info[ra]["residual"] |= residual
        return ra

    def add(self, space: int, key: str, value) -> None:
        self.info[self.find(space)][key].append(value)

    def freeze(self, space: int, reason: str) -> None:
        self.add(space, "frozen", reason)


def channel_groups(model: nn.Module, input_shape: tuple[int, ...]) -> list[ChannelGroup]:
    """Every channel space of the model as a group, in order of its first producer."""
    graph_module = trace(model, input_shape)
    modules = dict(model.named_modules())
    spaces = _Spaces()
    space: dict[torch.fx.Node, int] = {}
    per_channel: dict[torch.fx.Node, int] = {}  # features per channel after a flatten

    def tensor_args(node: torch.fx.Node) -> list[torch.fx.Node]:
        flat = list(node.args) + list(node.kwargs.values())
        return [a for a in flat if isinstance(a, torch.fx.Node) and a in space]

    def freeze_all(node: torch.fx.Node, reason: str) -> None:
        for arg in tensor_args(node):
            spaces.freeze(space[arg], reason)
        if shape_of(node) is not None:
            space[node] = spaces.new(frozen=reason)

    for node in graph_module.graph.nodes:
        if node.op == "placeholder":
            space[node] = spaces.new(frozen="model input")
        elif node.op == "output":
            for arg in _flatten_args(node.args):
                if arg in space:
                    spaces.freeze(space[arg], "model output")
        elif node.op == "get_attr":
            if shape_of(node) is not None:
                space[node] = spaces.new(frozen=f"parameter {node.target}")
        elif node.op == "call_module":
            _visit_module(node, modules[node.target], spaces, space, per_channel, freeze_all)
        else:
            _visit_function(node, spaces, space, per_channel, tensor_args, freeze_all)

    groups: dict[int, ChannelGroup] = {}
    for index in range(len(spaces.parent)):
        root = spaces.find(index)
        if root in groups:
            continue
        info = spaces.info[root]
        if not info["producers"]:
            continue
        first = modules[info["producers"][0]]
        channels = first.out_channels if isinstance(first, nn.Conv2d) else first.out_features
        groups[root] = ChannelGroup(
            channels=channels,
            producers=list(dict.fromkeys(info["producers"])),
            norms=list(dict.fromkeys(info["norms"])),
            depthwise=list(dict.fromkeys(info["depthwise"])),
            consumers=list(dict.fromkeys(info["consumers"])),
            residual=info["residual"],
            frozen=list(dict.fromkeys(info["frozen"])),
        )
    order = {name: i for i, name in enumerate(modules)}
    return sorted(groups.values(), key=lambda g: order[g.producers[0]])


def _flatten_args(args) -> list:
    out = []
    for a in args:
        if isinstance(a, list | tuple):
            out += _flatten_args(a)
        elif isinstance(a, dict):
            out += _flatten_args(list(a.values()))
        else:
            out.append(a)
    return out


def _visit_module(node, module, spaces: _Spaces, space, per_channel, freeze_all) -> None:
    name = node.target
    source = node.args[0] if node.args and isinstance(node.args[0], torch.fx.Node) else None
    if source is None or source not in space:
        freeze_all(node, f"module {name} with unusual inputs")
        return
    in_space = space[source]
    if isinstance(module, nn.Conv2d):
        if module.groups == 1:
            spaces.add(in_space, "consumers", (name, 1))
            space[node] = spaces.new()
            spaces.add(space[node], "producers", name)
        elif module.groups == module.in_channels == module.out_channels:
            spaces.add(in_space, "depthwise", name)
            space[node] = in_space
        else:
            freeze_all(node, f"grouped conv {name}")
    elif isinstance(module, nn.Linear):
        in_shape = shape_of(source)
        if in_shape is None or len(in_shape) != 2:
            freeze_all(node, f"linear {name} on a {len(in_shape or ())}-d input")
            return
        spaces.add(in_space, "consumers", (name, per_channel.get(source, 1)))
        space[node] = spaces.new()
        spaces.add(space[node], "producers", name)
    elif isinstance(module, nn.Flatten):
        _flatten(node, source, spaces, space, per_channel, ok=module.start_dim == 1)
    elif isinstance(module, _SAME_SPACE_MODULES):
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            spaces.add(in_space, "norms", name)
        space[node] = in_space
        if source in per_channel:
            per_channel[node] = per_channel[source]
    elif next(module.parameters(), None) is None and channel_order_kept(node, module, source):
        space[node] = in_space
        if len(shape_of(node)) == 2:
            per_channel[node] = 1
    else:
        freeze_all(node, f"module {name} ({type(module).__name__}) not understood")


def _flatten(node, source, spaces: _Spaces, space, per_channel, ok: bool) -> None:
    in_shape, out_shape = shape_of(source), shape_of(node)
    if not ok or in_shape is None or out_shape is None or len(out_shape) != 2 or len(in_shape) < 2:
        spaces.freeze(space[source], "reshape")
        space[node] = spaces.new(frozen="reshape")
        return
    spatial = 1
    for d in in_shape[2:]:
        spatial *= d
    space[node] = space[source]
    per_channel[node] = per_channel.get(source, 1) * spatial


def _visit_function(node, spaces: _Spaces, space, per_channel, tensor_args, freeze_all) -> None:
    name = op_name(node)
    args = tensor_args(node)
    if name in _SHAPE_FUNCTIONS or (name == "getitem" and not args):
        return
    if not args:
        if shape_of(node) is not None:
            space[node] = spaces.new(frozen=f"tensor from {name}")
        return
    first = args[0]
    if name in _SAME_SPACE_FUNCTIONS and len(args) == 1:
        space[node] = space[first]
        if first in per_channel:
            per_channel[node] = per_channel[first]
    elif name in _JOIN_FUNCTIONS:
        _join(node, args, name in _RESIDUAL_FUNCTIONS, spaces, space, freeze_all)
    elif name == "mean" and _reduces_spatial_only(node):
        space[node] = space[first]
        if len(shape_of(node) or ()) == 2:
            per_channel[node] = 1
    elif name in _FLATTEN_FUNCTIONS:
        ok = _shape_agnostic(node, name)
        _flatten(node, first, spaces, space, per_channel, ok=ok)
    else:
        freeze_all(node, f"operation {name}")


def _channels(node) -> int | None:
    shape = shape_of(node)
    return shape[1] if shape is not None and len(shape) >= 2 else None


def _join(node, args, residual: bool, spaces: _Spaces, space, freeze_all) -> None:
    """a + b, a * b: same-sized channel dims are one space; a broadcast operand (1 channel) is frozen."""
    out_channels = _channels(node)
    full = [a for a in args if _channels(a) == out_channels and out_channels is not None]
    if not full:
        freeze_all(node, f"operation {op_name(node)} on mismatched channels")
        return
    joined = space[full[0]]
    for arg in args:
        if arg in full[1:]:
            joined = spaces.union(joined, space[arg], residual=residual)
        elif arg not in full:
            spaces.freeze(space[arg], "broadcast operand")
    space[node] = joined


def _reduces_spatial_only(node) -> bool:
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if isinstance(dims, int):
        dims = [dims]
    if not isinstance(dims, list | tuple) or not dims:
        return False
    return all(isinstance(d, int) and (d >= 2 or d <= -1) for d in dims)


def _shape_agnostic(node, name: str) -> bool:
    """flatten(x, 1), or view/reshape(x, x.size(0), -1): no channel count baked into the graph."""
    rest = _flatten_args(list(node.args[1:]) + list(node.kwargs.values()))
    if name == "flatten":
        start = rest[0] if rest else 0
        return start == 1 and len(rest) <= 2 and (len(rest) < 2 or rest[1] == -1)
    return all(isinstance(a, torch.fx.Node) or a == -1 for a in rest) and sum(a == -1 for a in rest) == 1
