"""The MicroNet counting rules: one row of storage bits, multiplications and additions per traced op.

Per op, with N the output elements per example (SCORING.md):
  conv/linear  mults nnz*(N/c_out) = L*N, adds (L-1)*N, +N for an own bias (not when a BN follows)
  batch norm   a bias: c values stored, N adds
  relu 1 mult; silu and hard-swish 3 mults + 1 add; sigmoid 2 mults + 1 add; hard-sigmoid 2 + 1
  add/sub N adds; mul/div (squeeze-excite scale, constants) N mults
  pooling      avg: 1 mult + (k-1) adds per output, max: (k-1) adds (comparisons), global = avg
Each op is weighted by its bits / 32: a layer's mults by max(weight bits, input activation bits) (the
weight bits of fractional int codes: the packed bits a code costs, mncli.storage.bits_per_code),
other mults by the bits of their inputs (16 when they hold what fp16 layers computed, else 32; 16 with
the freebie), adds by the accumulator width: flat, one width a layer, or per level of a binary adder
tree (`--accumulation tree`, the widths a layer's spec `acc_tree` proves).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mncli.errors import BadInput
from mncli.scoring.tracer import TracedOp, numel
from mncli.scoring.weights import (
    WeightFormat,
    check_claim,
    claimed_format,
    fp16_exact,
    infer_format,
    weight_storage,
)

FLOAT_BITS = 32
HALF_BITS = 16

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
    accumulation: str = "flat"

    def check(self) -> None:
        if self.ternary_storage not in ("codes2", "sign1", "dense2"):
            raise BadInput(
                f"unknown ternary storage {self.ternary_storage!r}", hint="codes2, sign1 or dense2"
            )
        if self.accumulation not in ("flat", "tree"):
            raise BadInput(f"unknown accumulation {self.accumulation!r}", hint="flat or tree")
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
class TreeAdds:
    """A layer's additions booked per level of a binary adder tree, each level at its own width."""

    terms: int  # k, the products one dot product sums
    levels: list[tuple[float, int]]  # (adds, bits) per level, level 1 first
    bias: tuple[float, int] | None  # (adds, bits) of the layer's own bias, at the last level's width

    @property
    def parts(self) -> list[tuple[float, int]]:
        return [*self.levels, *([self.bias] if self.bias else [])]

    @property
    def weighted(self) -> float:
        return sum(adds * bits / 32 for adds, bits in self.parts)


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
    mult_bits: int | float = 32  # a float only for the packed bits of fractional int weights
    add_bits: int = 32
    sparsity: float | None = None
    weight_format: str | None = None
    weight_bits: int | float | None = None
    act_bits: int | None = None
    storage: str | None = None  # "dense" or "sparse": the form a weight is stored and charged in
    levels: int | None = None  # int weights of fractional bits: the levels of their grid
    tree: TreeAdds | None = None  # adds per level of a binary adder tree (else all at add_bits)

    @property
    def params(self) -> float:
        return self.param_bits / 32

    @property
    def mults(self) -> float:
        return self.raw_mults * self.mult_bits / 32

    @property
    def adds(self) -> float:
        if self.tree is not None:
            return self.tree.weighted
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
    acc_tree: list[int] | None = None  # accumulator bits per level of a binary adder tree (proved)
    fp16_weights: bool = False  # fp16 weights, or a ternary layer whose two scales are fp16 values

    @property
    def out_bits(self) -> int:
        """Bits of the layer's output: 16 from fp16 weights times 16-bit activations, else 32."""
        return HALF_BITS if self.fp16_weights and self.act_bits == HALF_BITS else FLOAT_BITS


def has_fp16_weights(fmt: WeightFormat, weight: torch.Tensor) -> bool:
    """fp16 weights, or ternary ones whose values (the two scales) are fp16 values: what an fp16 kernel
    multiplies (compress.quant.fp16 makes both)."""
    if fmt.format == "float":
        return fmt.bits == HALF_BITS
    return fmt.format == "ternary" and not weight.is_meta and fp16_exact(weight)


def tree_level_adds(k: int) -> list[int]:
    """Additions per level of a binary adder tree summing `k` terms: level 1 adds pairs of terms,
    level 2 pairs of those sums, and so on; an odd term passes up unchanged (k - 1 adds in all)."""
    levels = []
    while k > 1:
        levels.append(k // 2)
        k = (k + 1) // 2
    return levels


def check_acc_tree(layer: str, spec: dict) -> list[int] | None:
    """The spec's `acc_tree` (bits per tree level), or None; BadInput unless ints 2..32."""
    widths = spec.get("acc_tree")
    if widths is None:
        return None
    valid = isinstance(widths, list | tuple) and bool(widths)
    valid = valid and all(isinstance(w, int) and not isinstance(w, bool) and 2 <= w <= 32 for w in widths)
    if not valid:
        raise BadInput(
            f"layer {layer}: acc_tree must be a non-empty list of accumulator bits per tree level, "
            f"integers 2 to 32, got {widths!r}",
            hint="re-run quantize --accumulator-tree to prove the widths",
        )
    return [int(w) for w in widths]


def _tree_adds(
    terms_per_output: float, outputs: int, widths: list[int], bias: bool, max_bits: int
) -> TreeAdds:
    """Every output's dot product summed by a binary tree; level l at widths[l-1] (the last repeats)."""
    k = math.floor(terms_per_output + 0.5)
    counts = tree_level_adds(k)

    def width(level: int) -> int:
        return min(max_bits, widths[min(level, len(widths)) - 1])

    levels = [(float(count * outputs), width(level)) for level, count in enumerate(counts, 1)]
    bias_adds = (float(outputs), width(max(len(counts), 1))) if bias else None
    return TreeAdds(terms=k, levels=levels, bias=bias_adds)


def input_bits(op: TracedOp, produced: dict[int, int]) -> int:
    """Bits of an op's widest input: 16 for a float16/bfloat16 tensor, else the bits of what produced
    it (`produced`: id of a traced op -> its output bits), 32 for the model input and stored operands."""
    widest = 0
    for source in op.inputs:
        if source.dtype_bits <= HALF_BITS:
            bits = HALF_BITS
        else:
            bits = max((produced.get(id(p), FLOAT_BITS) for p in source.producers), default=FLOAT_BITS)
        widest = max(widest, bits)
    return widest or FLOAT_BITS


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
        fmt = claimed_format(spec, tuple(weight.shape), layer)
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
        acc_tree=check_acc_tree(layer, spec),
        fp16_weights=has_fp16_weights(fmt, weight),
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
    own_bias = bool(op.attrs.get("bias")) and op.bias_merged_into is None
    if own_bias:
        adds += out
    add_bits = min(opts.add_bits, info.acc_bits)
    tree = None
    if opts.accumulation == "tree" and info.acc_tree:
        tree = _tree_adds(mults / out if out else 0.0, out, info.acc_tree, own_bias, opts.add_bits)
        add_bits = max((bits for _, bits in tree.parts), default=add_bits)  # the widest level
    float_bits = opts.float_bits
    value_bits = min(fmt.bits, 16) if opts.freebie16 and fmt.format == "float" else fmt.value_bits
    bias_bits = 16 if (opts.freebie16 or (fmt.format == "float" and fmt.bits == 16)) else 32
    param_bits = raw_params = 0
    storage = None
    if first_use:
        param_bits, storage = weight_storage(
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
        mult_bits = max(fmt.value_bits, info.act_bits)
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
        add_bits=add_bits,
        sparsity=1 - info.nnz / info.n if info.n else 0.0,
        weight_format=fmt.label,
        weight_bits=value_bits if fmt.format != "ternary" else 2,
        act_bits=info.act_bits,
        storage=storage,
        tree=tree,
        levels=fmt.levels,
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


def elementwise_row(op: TracedOp, opts: Options, in_bits: int = FLOAT_BITS) -> Row:
    """Activations, arithmetic, pooling and reductions on activation tensors; their mults at the bits
    of their inputs, `in_bits` (16 with the freebie)."""
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
        mult_bits=min(in_bits, opts.float_bits),
        add_bits=opts.add_bits,
        act_bits=in_bits,
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
