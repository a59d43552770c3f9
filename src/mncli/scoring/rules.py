"""The MicroNet counting rules: one row of storage bits, multiplications and additions per traced op.

Per op, with N the output elements per example (SCORING.md):
  conv/linear  mults nnz*(N/c_out) = L*N, adds (L-1)*N, +N for an own bias (not when a BN follows)
  batch norm   a bias: c values stored, N adds
  relu 1 mult; silu and hard-swish 3 mults + 1 add; sigmoid 2 mults + 1 add; hard-sigmoid 2 + 1
  add/sub N adds; mul/div (squeeze-excite scale, constants) N mults
  pooling      avg: 1 mult + (k-1) adds per output, max: (k-1) adds (comparisons), global = avg
Each op is weighted by its bits / 32: mults by max(weight bits, input activation bits) (16 with the
freebie), adds by the accumulator width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mncli.errors import BadInput
from mncli.scoring.tracer import TracedOp, numel
from mncli.scoring.weights import WeightFormat, check_claim, claimed_format, infer_format, storage_bits

ELEMENTWISE = {  # kind -> (mults, adds) per output element
    "relu": (1, 0),
    "silu": (3, 1),
    "sigmoid": (2, 1),
    "hardswish": (3, 1),
    "hardsigmoid": (2, 1),
    "add": (0, 1),
    "mul": (1, 0),
    "div": (1, 0),
}


@dataclass
class Options:
    add_bits: int = 32
    freebie16: bool = False
    ternary_storage: str = "codes2"
    ternary_mults: str = "dense"
    infer: bool = False

    def check(self) -> None:
        if self.ternary_storage not in ("codes2", "sign1"):
            raise BadInput(f"unknown ternary storage {self.ternary_storage!r}", hint="codes2 or sign1")
        if self.ternary_mults not in ("dense", "factorized"):
            raise BadInput(
                f"unknown ternary mults convention {self.ternary_mults!r}", hint="dense or factorized"
            )
        if not 1 <= self.add_bits <= 32:
            raise BadInput(f"--add-bits must be between 1 and 32, got {self.add_bits}")

    @property
    def float_bits(self) -> int:
        """Bits of a 32-bit value and of an elementwise multiply: 16 with the freebie."""
        return 16 if self.freebie16 else 32


@dataclass
class Row:
    name: str
    type: str
    op: str
    shape: tuple[int, ...]
    param_bits: int = 0
    raw_params: int = 0  # stored values (weights, biases, scales), before weighting by bits
    raw_mults: float = 0.0
    raw_adds: float = 0.0
    mult_bits: int = 32
    add_bits: int = 32
    sparsity: float | None = None
    weight_format: str | None = None
    weight_bits: int | None = None
    act_bits: int | None = None

    @property
    def params(self) -> float:
        return self.param_bits / 32

    @property
    def mults(self) -> float:
        return self.raw_mults * self.mult_bits / 32

    @property
    def adds(self) -> float:
        return self.raw_adds * self.add_bits / 32


@dataclass
class LayerInfo:
    """What the rules need to know about one layer with weights."""

    fmt: WeightFormat
    n: int
    nnz: int
    c_out: int
    act_bits: int
    acc_bits: int
    extra_param_bits: int  # activation-quantizer scales
    extra_params: int
    checked: bool


def _act_bits(layer: str, spec: dict, modules: dict) -> int:
    act = spec.get("act") or {}
    bits = int(act.get("bits", 32))
    if bits < 32:
        quantizer = getattr(modules.get(layer), "act_quant", None)
        if quantizer is None:
            raise BadInput(
                f"layer {layer} claims {bits}-bit input activations but has no activation quantizer",
                hint="load it with mncli.bundle.load_bundle, which installs the quantizers the specs name",
            )
        real = getattr(quantizer, "bits", bits)
        if int(real) != bits:
            raise BadInput(f"layer {layer}: spec says {bits}-bit activations, its quantizer has {real} bits")
    return bits


def layer_info(
    layer: str, weight: torch.Tensor, state: dict, spec: dict, modules: dict, opts: Options
) -> LayerInfo:
    has_values = not weight.is_meta
    scale = state.get(f"{layer}.weight_scale")
    scale = None if scale is None or scale.is_meta else scale
    claims_weight = bool(spec.get("weight"))
    if not has_values:
        fmt = claimed_format(spec, tuple(weight.shape))
    elif claims_weight:
        fmt = check_claim(layer, spec, weight, scale)
    elif opts.infer:
        fmt = infer_format(weight)
    elif weight.dtype in (torch.float16, torch.bfloat16):
        fmt = WeightFormat("float", 16)
    else:
        fmt = WeightFormat("float", 32)
    n = weight.numel()
    nnz = int(torch.count_nonzero(weight)) if has_values else n
    prefix = f"{layer}.act_quant."
    act_tensors = [t for k, t in state.items() if k.startswith(prefix) and t.is_floating_point()]
    scale_bits = opts.float_bits
    return LayerInfo(
        fmt=fmt,
        n=n,
        nnz=nnz,
        c_out=int(weight.shape[0]),
        act_bits=_act_bits(layer, spec, modules),
        acc_bits=int(spec.get("acc_bits", 32)),
        extra_param_bits=sum(t.numel() for t in act_tensors) * scale_bits,
        extra_params=sum(t.numel() for t in act_tensors),
        checked=has_values,
    )


def check_freebie(infos: dict[str, LayerInfo]) -> None:
    for layer, info in infos.items():
        if info.fmt.bits < 16 or info.act_bits < 16:
            what = f"{info.fmt.label} weights" if info.fmt.bits < 16 else f"{info.act_bits}-bit activations"
            raise BadInput(
                f"--freebie16 refused: layer {layer} has {what}; once anything is below 16 bits every value "
                "counts at its real bits",
                hint="score without --freebie16",
            )


def weight_row(op: TracedOp, info: LayerInfo, bias_values: int, opts: Options, first_use: bool) -> Row:
    """Conv or linear: storage of weight (+ own bias + quantizer scales) and the dot products."""
    fmt = info.fmt
    out = numel(op.out_shape)
    positions = out / info.c_out
    mults = info.nnz * positions
    adds = max(mults - out, 0.0)
    own_bias = op.attrs.get("bias") and op.bias_merged_into is None
    if own_bias:
        adds += out
    float_bits = opts.float_bits
    value_bits = min(fmt.bits, 16) if opts.freebie16 and fmt.format == "float" else fmt.bits
    bias_bits = 16 if (opts.freebie16 or (fmt.format == "float" and fmt.bits == 16)) else 32
    param_bits = raw_params = 0
    if first_use:
        param_bits = storage_bits(
            info.n, info.nnz, fmt, value_bits=value_bits, ternary_storage=opts.ternary_storage
        )
        param_bits += info.extra_param_bits
        raw_params = info.n + fmt.n_scales + info.extra_params
        if own_bias:
            param_bits += bias_values * bias_bits
            raw_params += bias_values
    if opts.freebie16:
        mult_bits = 16
    elif fmt.format == "ternary":
        if opts.ternary_mults == "factorized":  # sum the +1 and the -1 inputs, then wp*sum+ and wn*sum-
            mults, mult_bits = 2.0 * out, float_bits
        else:
            mult_bits = info.act_bits
    else:
        mult_bits = max(fmt.bits, info.act_bits)
    groups = op.attrs.get("groups", 1)
    depthwise = op.kind == "conv" and groups > 1 and op.in_shapes and op.in_shapes[0][0] == groups
    return Row(
        name=op.name,
        type="dwconv" if depthwise else op.kind,
        op=op.op,
        shape=op.out_shape,
        param_bits=param_bits,
        raw_params=raw_params,
        raw_mults=mults,
        raw_adds=adds,
        mult_bits=mult_bits,
        add_bits=min(opts.add_bits, info.acc_bits),
        sparsity=1 - info.nnz / info.n if info.n else 0.0,
        weight_format=fmt.label,
        weight_bits=value_bits if fmt.format != "ternary" else 2,
        act_bits=info.act_bits,
    )


def bn_row(op: TracedOp, opts: Options, first_use: bool) -> Row:
    channels = int(op.attrs["channels"])
    return Row(
        name=op.name,
        type="bn",
        op=op.op,
        shape=op.out_shape,
        param_bits=channels * opts.float_bits if first_use else 0,
        raw_params=channels if first_use else 0,
        raw_adds=numel(op.out_shape),
        add_bits=opts.add_bits,
    )


def _adaptive_window_sum(size_in: int, size_out: int) -> int:
    """Sum of the window lengths of adaptive pooling along one dimension (PyTorch's start/end rule)."""
    return sum(math.ceil((i + 1) * size_in / size_out) - (i * size_in) // size_out for i in range(size_out))


def _kernel_area(kernel, spatial_dims: int) -> int:
    if kernel is None:
        raise BadInput("cannot score: a pooling op without a kernel size")
    if isinstance(kernel, int):
        return kernel**spatial_dims
    return math.prod(int(k) for k in kernel)


def elementwise_row(op: TracedOp, opts: Options) -> Row:
    """Activations, arithmetic, pooling and reductions on activation tensors."""
    out = numel(op.out_shape)
    inp = numel(op.in_shapes[0]) if op.in_shapes else out
    kind = op.kind
    row_type = kind
    if kind in ELEMENTWISE:
        per_mult, per_add = ELEMENTWISE[kind]
        mults, adds = per_mult * out, per_add * out
        if kind == "mul" and not op.constant_operand and len({*op.in_shapes}) > 1:
            row_type = "scale"  # squeeze-excite gate: channel weights broadcast over H x W
    elif kind in ("adaptive_avgpool", "adaptive_maxpool"):
        spatial_in, spatial_out = op.in_shapes[0][1:], op.out_shape[1:]
        windows = math.prod(_adaptive_window_sum(i, o) for i, o in zip(spatial_in, spatial_out, strict=True))
        adds = op.out_shape[0] * windows - out
        identity = tuple(spatial_in) == tuple(spatial_out)  # windows of one element: nothing to average
        mults = out if kind == "adaptive_avgpool" and not identity else 0
        row_type = "gap" if numel(spatial_out) == 1 and kind == "adaptive_avgpool" else kind.split("_")[1]
    elif kind in ("avgpool", "maxpool"):
        area = _kernel_area(op.attrs.get("kernel"), len(op.out_shape) - 1)
        mults = out if kind == "avgpool" else 0
        adds = (area - 1) * out
    elif kind in ("mean", "sum", "reduce_max"):
        reduced = inp // out if out else 0
        mults = out if kind == "mean" else 0
        adds = (reduced - 1) * out
        channels_kept = op.in_shapes[0][:1] if op.in_shapes and op.in_shapes[0] else ()
        if kind == "mean" and len(op.in_shapes[0]) >= 2 and channels_kept and out == channels_kept[0]:
            row_type = "gap"  # every spatial position averaged: global average pooling
    else:
        raise BadInput(f"cannot score: no counting rule for {op.op} ({kind})")
    return Row(
        name=op.name,
        type=row_type,
        op=op.op,
        shape=op.out_shape,
        raw_mults=float(mults),
        raw_adds=float(adds),
        mult_bits=opts.float_bits,
        add_bits=opts.add_bits,
    )


def tensor_row(name: str, tensor: torch.Tensor, opts: Options) -> Row:
    """A parameter used directly by a functional op (a layer scale, a learned offset): stored dense."""
    bits = 16 if tensor.dtype in (torch.float16, torch.bfloat16) else 32
    bits = min(bits, opts.float_bits)
    return Row(
        name=name,
        type="tensor",
        op="parameter",
        shape=tuple(tensor.shape),
        param_bits=tensor.numel() * bits,
        raw_params=tensor.numel(),
    )
