"""ProxylessNAS checkpoints (mit-han-lab/proxylessnas) onto our `mbconv` family, read with their `net.config`.

ProxylessNAS saves `{"state_dict": net.state_dict(), ...}` (RunManager.save_model; the released
`proxyless_*.pth` hold the same `state_dict` entry) and describes the network only in a JSON side file,
`net.config`: `first_conv` (a ConvLayer), `blocks` (MobileInvertedResidualBlocks: `mobile_inverted_conv`
an MBInvertedConvLayer or a ZeroLayer, `shortcut` an IdentityLayer or null), `feature_mix_layer` (a
ConvLayer or null), `classifier` (a LinearLayer) and `bn` (momentum, eps of every BatchNorm2d). The keys
follow those modules and are renamed onto mbconv's:

    first_conv.{conv,bn}                                      -> stem.{conv,bn}
    blocks.i.mobile_inverted_conv.inverted_bottleneck.{conv,bn} -> blocks.j.{expand,expand_bn}
    blocks.i.mobile_inverted_conv.depth_conv.{conv,bn}          -> blocks.j.{dw,dw_bn}
    blocks.i.mobile_inverted_conv.point_linear.{conv,bn}        -> blocks.j.{project,project_bn}
    feature_mix_layer.{conv,bn}                               -> head.{conv,bn}
    classifier.linear                                         -> classifier

j counts the blocks that are not zero: a ZeroLayer block passes its input through (ProxylessNAS' forward
returns x for it), which is mbconv's `zero`. Every other block becomes one string `ir_r1_kK_sS_eE_cC`.
Whatever mbconv cannot build exactly is refused, naming the block or layer: a residual where mbconv's rule
(stride 1 and equal channels) disagrees with the block's shortcut, channel counts that mbconv's rounding
to multiples of 8 would change, another activation than ReLU6, squeeze-excite, dilation, groups, conv
biases, dropout inside conv layers. A `mid_channels` override becomes the expansion ratio that gives it.
"""

from __future__ import annotations

from typing import Any

from mncli.errors import BadInput
from mncli.models.blocks import round_filters
from mncli.models.layouts import Converted, Layout, State, register_layout
from mncli.models.mbconv import format_block, parse_block

CONFIG_HINT = "give the net.config that ProxylessNAS wrote beside this checkpoint"
BN_FIELDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
INPUT_SIZE = 224  # ProxylessNAS' ImageNet resolution: net.config does not record one
_MISSING = object()

# (source key, our key, shape) in the source network's order.
Plan = list[tuple[str, str, tuple[int, ...]]]


def detect(state: State) -> bool:
    return "first_conv.conv.weight" in state and any(".mobile_inverted_conv." in key for key in state)


def _value(layer: dict, key: str, where: str, default: Any = _MISSING) -> Any:
    value = layer.get(key, default)
    if value is _MISSING:
        raise BadInput(f"net.config {where} has no {key!r}", hint=CONFIG_HINT)
    return value


def _integer(layer: dict, key: str, where: str, default: Any = _MISSING) -> int:
    value = _value(layer, key, where, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadInput(
            f"net.config {where}.{key} must be a positive integer, got {value!r}", hint=CONFIG_HINT
        )
    return value


def _number(layer: dict, key: str, where: str, default: Any = _MISSING) -> float:
    value = _value(layer, key, where, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e6:
        raise BadInput(
            f"net.config {where}.{key} must be a non-negative number, got {value!r}", hint=CONFIG_HINT
        )
    return float(value)


def _section(config: dict, key: str, where: str) -> dict:
    value = config.get(key)
    if not isinstance(value, dict):
        raise BadInput(f"net.config {where} must be an object, got {value!r}", hint=CONFIG_HINT)
    return value


def _require(layer: dict, key: str, default: Any, wanted: Any, where: str) -> None:
    """BadInput unless the layer's `key` (ProxylessNAS' `default` when absent) is what mbconv builds."""
    value = layer.get(key, default)
    if value != wanted:
        raise BadInput(
            f"net.config {where}: {key}={value!r} has no mbconv counterpart (mbconv needs {wanted!r})",
            hint="mbconv cannot hold this network exactly",
        )


def _require_name(layer: dict, names: tuple[str, ...], where: str) -> str:
    name = layer.get("name")
    if name not in names:
        raise BadInput(f"net.config {where} is a {name!r}, expected {' or '.join(names)}", hint=CONFIG_HINT)
    return name


def _unrounded(channels: int, where: str) -> int:
    rounded = round_filters(channels, 1.0)
    if rounded != channels:
        raise BadInput(
            f"net.config {where}: {channels} channels; mbconv rounds channels to multiples of 8 ({rounded})",
            hint="mbconv cannot hold this network exactly",
        )
    return channels


def _conv_layer(layer: dict, where: str, kernel: int) -> tuple[int, int, int]:
    """(in, out, stride) of a ConvLayer that mbconv builds as conv -> BN -> ReLU6 with a k x k kernel."""
    _require_name(layer, ("ConvLayer",), where)
    _require(layer, "kernel_size", 3, kernel, where)
    for key, default, wanted in (
        ("dilation", 1, 1),
        ("groups", 1, 1),
        ("bias", False, False),
        ("has_shuffle", False, False),
        ("use_bn", True, True),
        ("act_func", "relu", "relu6"),
        ("dropout_rate", 0, 0),
        ("ops_order", "weight_bn_act", "weight_bn_act"),
    ):
        _require(layer, key, default, wanted, where)
    stride = _integer(layer, "stride", where, 1)
    return _integer(layer, "in_channels", where), _integer(layer, "out_channels", where), stride


def _conv(src: str, ours: str, shape: tuple[int, ...]) -> Plan:
    return [(f"{src}.weight", f"{ours}.weight", shape)]


def _bn(src: str, ours: str, channels: int) -> Plan:
    return [
        (f"{src}.{f}", f"{ours}.{f}", () if f == "num_batches_tracked" else (channels,)) for f in BN_FIELDS
    ]


def _expansion(c_in: int, hidden: int, ratio: float, where: str, notes: list[str]) -> float:
    """The expansion ratio, as a block string writes it, from which mbconv builds `hidden` channels."""
    for candidate in (ratio, hidden / c_in):
        written = parse_block(format_block(kernel=3, stride=1, expand=candidate, channels=8))["expand"]
        if written != 1 and int(round(c_in * written)) == hidden:
            if candidate != ratio:
                notes.append(f"{where}: mid_channels {hidden} written as expansion {written:g} of {c_in}")
            return written
    raise BadInput(
        f"net.config {where}: {hidden} expanded channels from {c_in} have no mbconv expansion ratio",
        hint="mbconv cannot hold this network exactly",
    )


def _block(
    block: Any, index: int, channels: int, ours: int, state: State, notes: list[str]
) -> tuple[str, int, Plan]:
    """One MobileInvertedResidualBlock (the `ours`-th that is not zero): its block string, its output
    channels and its tensors."""
    where = f"blocks.{index}"
    if not isinstance(block, dict):
        raise BadInput(f"net.config {where} must be an object, got {block!r}", hint=CONFIG_HINT)
    where_conv = f"{where}.mobile_inverted_conv"
    conv = _section(block, "mobile_inverted_conv", where_conv)
    if _require_name(conv, ("MBInvertedConvLayer", "ZeroLayer"), where_conv) == "ZeroLayer":
        return "zero", channels, []
    shortcut = block.get("shortcut")
    residual = False
    if shortcut is not None:
        if not isinstance(shortcut, dict):
            raise BadInput(f"net.config {where}.shortcut must be an object or null", hint=CONFIG_HINT)
        kind = _require_name(shortcut, ("IdentityLayer", "ZeroLayer"), f"{where}.shortcut")
        residual = kind == "IdentityLayer"
        if residual:
            for key, wanted in (("use_bn", False), ("act_func", None), ("dropout_rate", 0)):
                _require(shortcut, key, wanted, wanted, f"{where}.shortcut")
    _require(conv, "act_func", "relu6", "relu6", where_conv)
    _require(conv, "use_se", False, False, where_conv)
    c_in = _integer(conv, "in_channels", where_conv)
    c_out = _unrounded(_integer(conv, "out_channels", where_conv), where)
    kernel = _integer(conv, "kernel_size", where_conv, 3)
    stride = _integer(conv, "stride", where_conv, 1)
    ratio = _number(conv, "expand_ratio", where_conv, 6)
    mid = conv.get("mid_channels")
    if c_in != channels:
        raise BadInput(f"net.config {where} takes {c_in} channels, but the layer before gives {channels}")
    if kernel % 2 != 1 or stride not in (1, 2) or ratio <= 0:
        raise BadInput(
            f"net.config {where}: kernel {kernel}, stride {stride}, expansion {ratio:g} is no MBConv"
        )
    if residual != (stride == 1 and c_in == c_out):
        have = "has an identity shortcut" if residual else "has no shortcut"
        rule = "adds one exactly where stride is 1 and channels stay"
        raise BadInput(
            f"net.config {where} ({c_in}->{c_out} channels, stride {stride}) {have}; mbconv {rule}",
            hint="mbconv cannot hold this network exactly",
        )
    src = f"blocks.{index}.mobile_inverted_conv"
    # ProxylessNAS' zoo code expands only above ratio 1, its search code at any ratio but 1: the state says.
    bottleneck = ratio > 1 or (ratio < 1 and f"{src}.inverted_bottleneck.conv.weight" in state)
    hidden = (mid if mid is not None else round(c_in * ratio)) if bottleneck else c_in
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise BadInput(f"net.config {where_conv}.mid_channels must be a positive integer, got {mid!r}")
    expand = _expansion(c_in, hidden, ratio, where, notes) if bottleneck else 1
    dst = f"blocks.{ours}"
    plan: Plan = []
    if bottleneck:
        plan += _conv(f"{src}.inverted_bottleneck.conv", f"{dst}.expand", (hidden, c_in, 1, 1))
        plan += _bn(f"{src}.inverted_bottleneck.bn", f"{dst}.expand_bn", hidden)
    plan += _conv(f"{src}.depth_conv.conv", f"{dst}.dw", (hidden, 1, kernel, kernel))
    plan += _bn(f"{src}.depth_conv.bn", f"{dst}.dw_bn", hidden)
    plan += _conv(f"{src}.point_linear.conv", f"{dst}.project", (c_out, hidden, 1, 1))
    plan += _bn(f"{src}.point_linear.bn", f"{dst}.project_bn", c_out)
    return format_block(kernel=kernel, stride=stride, expand=expand, channels=c_out), c_out, plan


def _bn_args(config: dict, notes: list[str]) -> tuple[float, float]:
    bn = config.get("bn")
    if bn is None:
        notes.append("net.config has no bn: PyTorch's BatchNorm defaults (eps 1e-5, momentum 0.1)")
        return 1e-5, 0.1
    if not isinstance(bn, dict):
        raise BadInput(f"net.config bn must be an object, got {bn!r}", hint=CONFIG_HINT)
    eps, momentum = _number(bn, "eps", "bn"), _number(bn, "momentum", "bn")
    if eps <= 0 or momentum > 1:
        raise BadInput(f"net.config bn: eps {eps:g} must be above 0 and momentum {momentum:g} at most 1")
    return eps, momentum


def _renamed(state: State, plan: Plan) -> State:
    """The state under our names; BadInput naming the first key that disagrees with net.config."""
    renamed = {}
    for src, ours, shape in plan:
        if src not in state:
            if src.endswith("num_batches_tracked"):
                continue  # checkpoints of PyTorch < 0.4.1 have none
            raise BadInput(f"the checkpoint has no {src}, which net.config implies", hint=CONFIG_HINT)
        if tuple(state[src].shape) != shape:
            raise BadInput(
                f"{src} is {list(state[src].shape)} in the checkpoint but {list(shape)} by net.config",
                hint=CONFIG_HINT,
            )
        renamed[ours] = state[src]
    planned = {src for src, _, _ in plan}
    extra = next((key for key in state if key not in planned), None)
    if extra is not None:
        raise BadInput(
            f"{extra} is in the checkpoint but not in the network net.config describes", hint=CONFIG_HINT
        )
    return renamed


def convert(state: State, config: dict | None) -> Converted:
    if config is None:
        raise BadInput("a ProxylessNAS checkpoint needs its net.config to be read", hint=CONFIG_HINT)
    if not isinstance(config, dict):
        raise BadInput("net.config must be a JSON object", hint=CONFIG_HINT)
    name = config.get("name", "ProxylessNASNets")
    if name != "ProxylessNASNets":
        raise BadInput(
            f"net.config describes a {name}; only a ProxylessNASNets maps onto mbconv", hint=CONFIG_HINT
        )
    notes: list[str] = []
    plan: Plan = []
    first_conv = _section(config, "first_conv", "first_conv")
    in_channels, stem, stem_stride = _conv_layer(first_conv, "first_conv", 3)
    _unrounded(stem, "first_conv")
    if stem_stride not in (1, 2):
        raise BadInput(f"net.config first_conv: stride {stem_stride}; mbconv's stem takes stride 1 or 2")
    plan += _conv("first_conv.conv", "stem.conv", (stem, in_channels, 3, 3))
    plan += _bn("first_conv.bn", "stem.bn", stem)
    blocks = config.get("blocks")
    if not isinstance(blocks, list) or not blocks:
        raise BadInput("net.config blocks must be a non-empty list", hint=CONFIG_HINT)
    strings, channels = [], stem
    for index, block in enumerate(blocks):
        ours = len(strings) - strings.count("zero")
        text, channels, tensors = _block(block, index, channels, ours, state, notes)
        strings.append(text)
        plan += tensors
    if strings.count("zero"):
        notes.append(f"{strings.count('zero')} ZeroLayer blocks (input passed through) written as zero")
    head = 0
    mix = config.get("feature_mix_layer")
    if mix is not None:
        if not isinstance(mix, dict):
            raise BadInput("net.config feature_mix_layer must be an object or null", hint=CONFIG_HINT)
        mix_in, head, _ = _conv_layer(mix, "feature_mix_layer", 1)
        _require(mix, "stride", 1, 1, "feature_mix_layer")
        if mix_in != channels:
            raise BadInput(
                f"net.config feature_mix_layer takes {mix_in} channels; the last block gives {channels}"
            )
        _unrounded(head, "feature_mix_layer")
        plan += _conv("feature_mix_layer.conv", "head.conv", (head, channels, 1, 1))
        plan += _bn("feature_mix_layer.bn", "head.bn", head)
        channels = head
    classifier = _section(config, "classifier", "classifier")
    _require_name(classifier, ("LinearLayer",), "classifier")
    for key, default, wanted in (("bias", True, True), ("use_bn", False, False), ("act_func", None, None)):
        _require(classifier, key, default, wanted, "classifier")
    _require(classifier, "ops_order", "weight_bn_act", "weight_bn_act", "classifier")
    features = _integer(classifier, "in_features", "classifier")
    num_classes = _integer(classifier, "out_features", "classifier")
    dropout = _number(classifier, "dropout_rate", "classifier", 0)
    if features != channels:
        raise BadInput(f"net.config classifier takes {features} features; the layer before gives {channels}")
    if dropout > 1:
        raise BadInput(
            f"net.config classifier.dropout_rate must be at most 1, got {dropout:g}", hint=CONFIG_HINT
        )
    plan += [
        ("classifier.linear.weight", "classifier.weight", (num_classes, features)),
        ("classifier.linear.bias", "classifier.bias", (num_classes,)),
    ]
    bn_eps, bn_momentum = _bn_args(config, notes)
    notes.append(
        f"input_size {INPUT_SIZE}: net.config does not record the resolution (ProxylessNAS: ImageNet)"
    )
    args = {
        "blocks": strings,
        "stem_channels": stem,
        "stem_stride": stem_stride,
        "head_channels": head,
        "act": "relu6",
        "width_mult": 1.0,
        "depth_mult": 1.0,
        "dropout": dropout,
        "bn_eps": bn_eps,
        "bn_momentum": bn_momentum,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "input_size": INPUT_SIZE,
    }
    return Converted(arch="mbconv", args=args, state=_renamed(state, plan), notes=notes)


register_layout(
    Layout(
        name="proxylessnas",
        description="ProxylessNAS (mit-han-lab/proxylessnas) ProxylessNASNets -> mbconv",
        detect=detect,
        convert=convert,
        config_help="the run's net.config (JSON written beside the checkpoint; the released nets' *.config)",
    )
)
