"""MicroNet counting of an ONNX image classifier, whatever made it: the same rows, rules and report as
`score_model` gives for a model in memory (`mncli.scoring.rules` does the arithmetic for both).

    graph = load_onnx("model.onnx")          # shapes inferred at batch 1, constants resolved
    report = score_onnx(graph, task="cifar100")

What the graph says, read the way the rules need it:
* ops: every node that computes on activations (tensors that depend on the graph input) is counted by
  its type: Conv (groups, depthwise), Gemm and MatMul with a constant weight (a MatMul + Add of a
  constant bias is one linear layer with its bias), BatchNormalization (a bias; a conv bias right
  before it merges into it), Relu / Clip / Min / Max (booked as relu), Sigmoid, HardSigmoid,
  HardSwish, x * Sigmoid(x) (silu), Add / Sub, Mul / Div, MaxPool, AveragePool, GlobalAveragePool,
  GlobalMaxPool, ReduceMean / ReduceSum / ReduceMax. Shape, copy and quantize / dequantize nodes
  are free; nodes on constants alone are folded at deployment (free). Any other op on activations is
  refused by name (BadInput), never skipped.
* bits: a weight is what its constant subgraph decodes: a float initializer at its type's bits
  (FLOAT16: 16), a DequantizeLinear of an integer initializer at the integer type's bits (INT8 8,
  INT4 4, INT2 2; fewer when the model's `mncli.weight_bits` metadata claims it, checked against
  the codes), one integer code tensor decoded through two DequantizeLinear scales into {-wn, 0, +wp}
  a ternary layer. An activation's bits are those of the QuantizeLinear -> DequantizeLinear pair that
  produced it (narrowed by a Clip on the integer codes), of a Cast to FLOAT16, else of its type.
* storage: weights with their measured non-zeros, quantizer scales at 32 bits (zero points that are
  all zero are part of the format, others count at their bits), biases, batch norms, and any other
  constant tensor an op on activations uses (scalars are literals, free).

onnx is imported lazily: without the `onnx` extra, `require_onnx` is a BadInput naming it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mncli.errors import BadInput

ONNX_EXTRA = "pip install 'mncli[onnx]'"


def require_onnx(what: str = "ONNX support", *, runtime: bool = False) -> Any:
    """The onnx module (and onnxruntime with `runtime`), or BadInput naming the extra to install."""
    try:
        import onnx

        if runtime:
            import onnxruntime  # noqa: F401
    except ImportError as exc:
        missing = getattr(exc, "name", None) or "onnx"
        raise BadInput(
            f"{what} needs the optional package {missing}, which is not installed",
            hint=f"install the onnx extra: {ONNX_EXTRA}",
        ) from None
    return onnx


# fmt: off
# Ops on activations that cost nothing: shapes, copies, indexing, precision changes, quantize/dequantize.
FREE_OPS = {
    "Identity", "Dropout", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split",
    "Slice", "Gather", "GatherElements", "GatherND", "Pad", "Expand", "Tile", "Cast", "CastLike",
    "QuantizeLinear", "DequantizeLinear", "DepthToSpace", "SpaceToDepth", "Shape", "Size",
    "ConstantOfShape", "Optional", "OptionalGetElement",
}
# Free ops whose output holds values of its input (its bits pass through).
_PASS_BITS = {
    "Identity", "Dropout", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split",
    "Slice", "Gather", "GatherElements", "GatherND", "Pad", "Expand", "Tile", "DepthToSpace",
    "SpaceToDepth", "MaxPool", "GlobalMaxPool", "Relu", "ReduceMax",
}
# Op type -> rules kind for elementwise ops, pooling and reductions.
ELEMENTWISE_OPS = {
    "Relu": "relu", "Clip": "relu", "Min": "relu", "Max": "relu", "Sigmoid": "sigmoid",
    "HardSigmoid": "hardsigmoid", "HardSwish": "hardswish", "Swish": "silu", "Add": "add", "Sub": "add",
    "Mul": "mul", "Div": "div", "MaxPool": "maxpool", "AveragePool": "avgpool",
    "GlobalAveragePool": "adaptive_avgpool", "GlobalMaxPool": "adaptive_maxpool", "ReduceMean": "mean",
    "ReduceSum": "sum", "ReduceMax": "reduce_max",
}
WEIGHT_OPS = {"Conv": "conv", "Gemm": "linear", "MatMul": "linear"}
SUPPORTED = sorted({*WEIGHT_OPS, "BatchNormalization", *ELEMENTWISE_OPS})
# fmt: on

_INT_TYPES = {  # TensorProto data type -> (bits, signed)
    2: (8, False), 3: (8, True), 4: (16, False), 5: (16, True), 6: (32, True), 7: (64, True),
    12: (32, False), 13: (64, False), 21: (4, False), 22: (4, True), 25: (2, False), 26: (2, True),
}  # fmt: skip
_FLOAT_TYPES = {1: 32, 10: 16, 16: 16, 11: 64, 17: 8, 18: 8, 19: 8, 20: 8, 23: 4}
_HALF_TYPES = {10, 16}  # FLOAT16, BFLOAT16


def type_bits(elem_type: int) -> int:
    """Bits of one element of an ONNX tensor type (0 when not a number)."""
    if elem_type in _INT_TYPES:
        return _INT_TYPES[elem_type][0]
    return _FLOAT_TYPES.get(elem_type, 0)


def _range_bits(lo: int, hi: int, signed: bool) -> int:
    """Fewest bits of a two's complement (signed) or unsigned code holding [lo, hi]."""
    for bits in range(1, 65):
        if signed and -(2 ** (bits - 1)) <= lo and hi <= 2 ** (bits - 1) - 1:
            return bits
        if not signed and lo >= 0 and hi <= 2**bits - 1:
            return bits
    return 64


@dataclass
class OnnxGraph:
    """An ONNX model read for counting: batch fixed to 1, shapes inferred, constants evaluable."""

    path: Path
    model: Any  # onnx.ModelProto
    input_name: str
    input_shape: tuple[int, ...]  # per example (C, H, W)
    metadata: dict[str, str]
    num_classes: int | None
    inits: dict[str, Any] = field(default_factory=dict)
    producer: dict[str, Any] = field(default_factory=dict)
    consumers: dict[str, list] = field(default_factory=dict)
    shapes: dict[str, tuple] = field(default_factory=dict)
    types: dict[str, int] = field(default_factory=dict)
    _values: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        arch = self.metadata.get("mncli.arch")
        if arch:
            try:
                return str(json.loads(arch).get("name") or self.path.stem)
            except (ValueError, AttributeError):
                pass
        return self.model.graph.name or self.path.stem

    def arch(self) -> dict:
        """The mncli architecture the metadata records, else the graph's name and producer."""
        try:
            arch = json.loads(self.metadata.get("mncli.arch", "null"))
        except ValueError:
            arch = None
        if isinstance(arch, dict) and arch.get("name"):
            return arch
        producer = " ".join(p for p in (self.model.producer_name, self.model.producer_version) if p)
        return {"name": self.name, "args": {}, "producer": producer or None}

    # constants -----------------------------------------------------------------------------------
    def value(self, name: str):
        """The numpy value of a constant tensor (an initializer, a Constant, or computed from them)."""
        if name in self._values:
            return self._values[name]
        from onnx import numpy_helper

        if name in self.inits:
            value = numpy_helper.to_array(self.inits[name])
        else:
            node = self.producer.get(name)
            if node is None:
                raise BadInput(f"{self.path}: tensor {name!r} is neither computed nor stored in the graph")
            inputs = [self.value(i) if i else None for i in node.input]
            outputs = _evaluate(node, inputs)
            for out, val in zip(node.output, outputs, strict=False):
                self._values[out] = val
            value = self._values[name]
        self._values[name] = value
        return value

    def leaves(self, name: str) -> tuple[list[str], list[Any]]:
        """(stored tensors, decoding nodes) that a constant tensor is computed from."""
        leaves, nodes, seen, stack = [], [], set(), [name]
        while stack:
            current = stack.pop()
            if not current or current in seen:
                continue
            seen.add(current)
            if current in self.inits:
                leaves.append(current)
                continue
            node = self.producer.get(current)
            if node is None:
                continue
            if node.op_type == "Constant":
                leaves.append(current)
                continue
            nodes.append(node)
            stack.extend(node.input)
        return leaves, nodes

    def stored(self, name: str) -> bool:
        """A stored tensor (an initializer), not a literal of a Constant node."""
        return name in self.inits

    def elem_type(self, name: str) -> int:
        if name in self.inits:
            return int(self.inits[name].data_type)
        return int(self.types.get(name, 0))

    def shape(self, name: str) -> tuple[int, ...]:
        shape = self.shapes.get(name)
        if shape is None and (name in self.inits or self.producer.get(name) is not None):
            try:
                shape = tuple(int(s) for s in self.value(name).shape)
            except BadInput:
                shape = None
        if shape is None:
            raise BadInput(
                f"{self.path}: the shape of tensor {name!r} cannot be inferred",
                hint="export the model with a fixed input size (only the batch may be dynamic)",
            )
        return shape


def _attrs(node) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _np_type(elem_type: int):
    from onnx import helper

    return helper.tensor_dtype_to_np_dtype(elem_type)


def _dequantize(x, scale, zero_point, axis: int):
    """(x - zero_point) * scale in float32: per tensor for one scale, else along `axis`."""
    import numpy as np

    codes = x.astype(np.int64)
    zp = zero_point.astype(np.int64) if zero_point is not None else np.zeros((), np.int64)
    scale = scale.astype(np.float32)
    if scale.size == 1:
        scale, zp = scale.reshape(()), zp.reshape(()) if zp.size == 1 else zp
    elif x.ndim:
        shape = [1] * x.ndim
        shape[axis % x.ndim] = -1
        scale = scale.reshape(shape)
        zp = zp.reshape(shape) if zp.size > 1 else zp.reshape(())
    return ((codes - zp).astype(np.float32) * scale).astype(np.float32)


def _evaluate(node, inputs: list) -> list:
    """Run one node on constants: numpy for what weight decoding uses, the ONNX reference otherwise."""
    import numpy as np

    op, attrs = node.op_type, _attrs(node)
    if node.domain not in ("", "ai.onnx"):
        raise BadInput(f"cannot evaluate constant op {node.domain}.{op} ({node.name or 'unnamed'})")
    if op == "Constant":
        from onnx import numpy_helper

        if "value" in attrs:
            return [numpy_helper.to_array(attrs["value"])]
        for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                           ("value_ints", np.int64)):  # fmt: skip
            if key in attrs:
                return [np.array(attrs[key], dtype=dtype)]
    elif op == "DequantizeLinear" and not attrs.get("block_size"):
        zp = inputs[2] if len(inputs) > 2 else None
        return [_dequantize(inputs[0], inputs[1], zp, int(attrs.get("axis", 1)))]
    elif op == "Cast":
        return [inputs[0].astype(_np_type(int(attrs["to"])))]
    elif op == "Identity":
        return [inputs[0]]
    elif op == "Reshape" and not attrs.get("allowzero"):
        shape = [int(s) for s in inputs[1]]
        shape = [inputs[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
        return [inputs[0].reshape(shape)]
    elif op == "Transpose":
        return [np.transpose(inputs[0], attrs.get("perm"))]
    elif op in ("Relu", "Neg", "Abs"):
        x = inputs[0]
        return [
            {
                "Relu": lambda: np.maximum(x, np.zeros((), x.dtype)),
                "Neg": lambda: -x,
                "Abs": lambda: np.abs(x),
            }[op]()
        ]
    elif op in ("Add", "Sub", "Mul", "Max", "Min") and len(inputs) == 2:
        a, b = inputs
        fn = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Max": np.maximum, "Min": np.minimum}[op]
        return [fn(a, b).astype(np.result_type(a, b))]
    elif op == "Where":
        return [np.where(inputs[0], inputs[1], inputs[2])]
    elif op in ("Equal", "Greater", "Less"):
        fn = {"Equal": np.equal, "Greater": np.greater, "Less": np.less}[op]
        return [fn(inputs[0], inputs[1])]
    from onnx.reference import ReferenceEvaluator

    try:
        feeds = {name: value for name, value in zip(node.input, inputs, strict=False) if name}
        return list(ReferenceEvaluator(node).run(None, feeds))
    except Exception as exc:  # noqa: BLE001 - the reference raises many types
        raise BadInput(f"cannot evaluate constant op {op} ({node.name or 'unnamed'}): {exc}") from None


def _fix_batch(model) -> Any:
    """A copy of the model with the input's batch dimension set to 1 and shapes inferred anew."""
    import onnx
    from onnx import helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    init_names = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in init_names]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise BadInput(
            f"an image classifier has one input, this graph has {len(inputs)} ({names})",
            hint="export the model with the image tensor as its only input",
        )
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) < 2:
        raise BadInput(f"input {inputs[0].name!r} has {len(dims)} dimensions; expected N x C x H x W")
    dims[0].Clear()
    dims[0].dim_value = 1
    del graph.value_info[:]
    outputs = [
        helper.make_tensor_value_info(o.name, o.type.tensor_type.elem_type, None) for o in graph.output
    ]
    del graph.output[:]
    graph.output.extend(outputs)
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises InferenceError and others
        raise BadInput(f"shape inference failed: {str(exc).splitlines()[0][:200]}") from None


def load_onnx(path: str | Path) -> OnnxGraph:
    """Read an ONNX model for counting; BadInput when it is not one, or not an image classifier."""
    onnx = require_onnx("scoring an ONNX model")
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path} not found", hint="give an .onnx file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf DecodeError and friends
        raise BadInput(f"{path} is not an ONNX model: {str(exc).splitlines()[0][:160]}") from None
    if not model.graph.node:
        raise BadInput(f"{path} is not an ONNX model (no graph nodes)")
    model = _fix_batch(model)
    graph = model.graph
    init_names = {i.name for i in graph.initializer}
    inp = next(i for i in graph.input if i.name not in init_names)
    dims = inp.type.tensor_type.shape.dim
    shape = tuple(int(d.dim_value) if d.HasField("dim_value") else -1 for d in dims[1:])
    if any(s <= 0 for s in shape):
        raise BadInput(
            f"{path}: input {inp.name!r} has symbolic sizes {[d.dim_param or d.dim_value for d in dims]}",
            hint="export with a fixed C x H x W (only the batch dimension may be dynamic)",
        )
    result = OnnxGraph(
        path=path,
        model=model,
        input_name=inp.name,
        input_shape=shape,
        metadata={p.key: p.value for p in model.metadata_props},
        num_classes=None,
    )
    result.inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list] = defaultdict(list)
    for node in graph.node:
        for out in node.output:
            if out:
                result.producer[out] = node
        for name in node.input:
            if name:
                consumers[name].append(node)
    result.consumers = dict(consumers)
    for info in [*graph.value_info, *graph.input, *graph.output]:
        tensor = info.type.tensor_type
        result.types[info.name] = int(tensor.elem_type)
        if tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim):
            result.shapes[info.name] = tuple(int(d.dim_value) for d in tensor.shape.dim)
    out_shape = result.shapes.get(graph.output[0].name) if graph.output else None
    if out_shape and len(out_shape) == 2:
        result.num_classes = int(out_shape[1])
    return result


# ---- counting ---------------------------------------------------------------------------------------


@dataclass
class _Weight:
    fmt: Any  # WeightFormat
    values: Any  # numpy, float
    leaves: list[str]
    extra_bits: int = 0
    extra_params: int = 0
    main: str = ""


class _Counter:
    def __init__(self, graph: OnnxGraph, opts):
        self.g = graph
        self.opts = opts
        self.acts: set[str] = {graph.input_name}
        self.bits: dict[str, int] = {
            graph.input_name: min(32, type_bits(graph.elem_type(graph.input_name)) or 32)
        }
        self.counted: set[str] = set()  # stored tensors already charged
        self.ops: list = []
        self.infos: dict[int, tuple] = {}  # id(TracedOp) -> (LayerInfo, bias values, first use)
        self.bn_first: dict[int, bool] = {}  # id(TracedOp) -> first use of the batch norm's parameters
        self.mains: set[str] = set()  # stored weights already charged to a layer
        self.layer_of: dict[str, Any] = {}  # output tensor -> the weight op that produced it
        self.skip: set[int] = set()  # ids of nodes merged into an earlier op
        self.op_out: dict[int, str] = {}  # id(TracedOp) -> the tensor it computes
        self.in_bits: dict[int, int] = {}  # id(TracedOp) of an elementwise op -> bits of its inputs
        self.value_bits: dict[str, int] = {
            graph.input_name: 16 if graph.elem_type(graph.input_name) in _HALF_TYPES else 32
        }
        self.loose: list = []
        self.warnings: list[str] = []
        self._names: dict[str, int] = {}
        claims = graph.metadata.get("mncli.weight_bits")
        try:
            self.claims = {str(k): int(v) for k, v in json.loads(claims).items()} if claims else {}
        except (ValueError, AttributeError, TypeError):
            raise BadInput(f"{graph.path}: malformed mncli.weight_bits metadata") from None

    # helpers -------------------------------------------------------------------------------------
    def is_act(self, name: str) -> bool:
        return bool(name) and name in self.acts

    def per_example(self, name: str) -> tuple[int, ...]:
        return tuple(self.g.shape(name)[1:])

    def node_name(self, node) -> str:
        base = node.name or node.op_type
        self._names[base] = self._names.get(base, 0) + 1
        count = self._names[base]
        return base if count == 1 else f"{base}#{count}"

    def refuse(self, node, why: str = "") -> None:
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        raise BadInput(
            f"cannot score: ONNX op {op} ({node.name or 'unnamed node'}) is not in the MicroNet counting "
            f"rules{why}",
            hint="supported on activations: " + ", ".join(SUPPORTED) + ", and shape/copy/quantize ops",
        )

    # bits ----------------------------------------------------------------------------------------
    def _int_range_bits(self, node) -> int | None:
        """Bits of a Clip on integer codes, from its bounds."""
        bounds = [self.g.value(n) for n in node.input[1:3] if n]
        if len(node.input) < 3 or not all(b.size == 1 for b in bounds) or len(bounds) < 2:
            return None
        lo, hi = int(bounds[0].reshape(())), int(bounds[1].reshape(()))
        return _range_bits(lo, hi, signed=lo < 0)

    def propagate_bits(self, node) -> None:
        inputs = [self.bits.get(n, 32) for n in node.input if self.is_act(n)]
        op = node.op_type
        for out in node.output:
            if not out:
                continue
            out_type = self.g.types.get(out, 0)
            own = min(32, type_bits(out_type) or 32)
            if op == "DequantizeLinear":
                bits = self.bits.get(node.input[0], own)
            elif op == "QuantizeLinear":
                bits = own
            elif op == "Clip" and out_type in _INT_TYPES:
                narrowed = self._int_range_bits(node)
                bits = min(self.bits.get(node.input[0], own), narrowed or own)
            elif op in ("Cast", "CastLike"):
                bits = min(inputs[0] if inputs else own, own)
            elif op in _PASS_BITS and inputs:
                bits = min(max(inputs), own)
            else:
                bits = own
            self.bits[out] = bits

    # weights -------------------------------------------------------------------------------------
    def _codes_bits(self, codes_name: str, codes, zero_point) -> int:
        bits, signed = _INT_TYPES[self.g.elem_type(codes_name)]
        claim = self.claims.get(codes_name)
        if claim is not None and claim < bits:
            centred = codes.astype("int64") - (zero_point.astype("int64") if zero_point is not None else 0)
            lo, hi = int(centred.min()), int(centred.max())
            if _range_bits(lo, hi, signed) > claim:
                raise BadInput(
                    f"{self.g.path}: {codes_name} is said to hold {claim}-bit codes but holds codes in "
                    f"[{lo}, {hi}]",
                    hint="the mncli.weight_bits metadata contradicts the weights; re-export the model",
                )
            bits = claim
        return bits

    def _quant_params(self, names: list[str], container_bits: int) -> tuple[int, int]:
        """(bits, values) of not yet charged scales (32 bits) and non-zero zero points (their bits)."""
        bits = count = 0
        for index, name in enumerate(names):
            if not name or name in self.counted or not self.g.stored(name):
                continue
            value = self.g.value(name)
            self.counted.add(name)
            if index == 0:  # scale
                bits += int(value.size) * self.opts.float_bits
                count += int(value.size)
            elif value.any():  # zero point: charged only when it says something
                bits += int(value.size) * container_bits
                count += int(value.size)
        return bits, count

    def weight(self, node, name: str) -> _Weight:
        """The format, values and storage extras of a constant weight."""
        import numpy as np
        import torch

        from mncli.scoring.weights import WeightFormat, infer_format

        g = self.g
        leaves, nodes = g.leaves(name)
        values = np.asarray(g.value(name)).astype(np.float32)
        dqs = [n for n in nodes if n.op_type == "DequantizeLinear"]
        extra_bits = extra = 0
        if dqs:
            codes = sorted({dq.input[0] for dq in dqs})
            if len(codes) != 1 or g.elem_type(codes[0]) not in _INT_TYPES:
                raise BadInput(
                    f"cannot score: the weight of {node.name or node.op_type} is decoded from "
                    f"{len(codes)} tensors ({', '.join(codes)}); one integer code tensor is expected"
                )
            main = codes[0]
            container = _INT_TYPES[g.elem_type(main)][0]
            scales = [dq.input[1] for dq in dqs]
            n_scales = sum(int(g.value(s).size) for s in set(scales))
            for dq in dqs:
                zp = dq.input[2] if len(dq.input) > 2 else ""
                b, c = self._quant_params(["", zp], container)
                extra_bits, extra = extra_bits + b, extra + c
            self.counted.update(s for s in scales if g.stored(s))
            distinct = np.unique(values)
            pos, neg = distinct[distinct > 0], distinct[distinct < 0]
            if len(dqs) >= 2 and pos.size <= 1 and neg.size <= 1:
                fmt = WeightFormat("ternary", 2, n_scales=n_scales)
            else:
                zero = dqs[0].input[2] if len(dqs[0].input) > 2 and dqs[0].input[2] else None
                bits = self._codes_bits(main, g.value(main), g.value(zero) if zero else None)
                fmt = WeightFormat("int", bits, n_scales=n_scales)
        else:
            stored = [leaf for leaf in leaves if g.elem_type(leaf) in _FLOAT_TYPES]
            if not stored:
                raise BadInput(
                    f"cannot score: the weight of {node.name or node.op_type} holds no float or int values"
                )
            main = max(stored, key=lambda leaf: int(np.prod(g.value(leaf).shape)))
            fmt = WeightFormat("float", min(32, _FLOAT_TYPES[g.elem_type(main)]))
            for leaf in stored:  # other float tensors the weight is computed from (weight norm's g)
                if leaf != main and g.stored(leaf) and leaf not in self.counted and g.value(leaf).size > 1:
                    extra_bits += int(g.value(leaf).size) * min(
                        self.opts.float_bits, _FLOAT_TYPES[g.elem_type(leaf)]
                    )
                    extra += int(g.value(leaf).size)
        if self.opts.infer:
            fmt = infer_format(torch.from_numpy(np.ascontiguousarray(values)))
        self.counted.update(leaf for leaf in leaves if g.stored(leaf))
        return _Weight(fmt, values, leaves, extra_bits, extra, main)

    def act_params(self, data: str) -> tuple[int, int]:
        """Scales of the quantize/dequantize pair right before a layer's input, once per tensor."""
        g, current = self.g, data
        for _ in range(64):
            node = g.producer.get(current)
            if node is None:
                return 0, 0
            if node.op_type == "DequantizeLinear":
                container = type_bits(g.elem_type(node.input[0])) or 8
                bits, count = self._quant_params(list(node.input[1:3]), container)
                source = g.producer.get(node.input[0])
                while source is not None and source.op_type == "Clip":
                    source = g.producer.get(source.input[0])
                if source is not None and source.op_type == "QuantizeLinear":
                    b, c = self._quant_params(list(source.input[1:3]), container)
                    bits, count = bits + b, count + c
                return bits, count
            if node.op_type not in _PASS_BITS or node.op_type in ("MaxPool", "Relu", "ReduceMax"):
                return 0, 0
            current = next((n for n in node.input if self.is_act(n)), "")

    # ops -----------------------------------------------------------------------------------------
    def count(self) -> None:
        for node in self.g.model.graph.node:
            if node.op_type in ("If", "Loop", "Scan") and any(self.is_act(n) for n in node.input):
                self.refuse(node, " (control flow)")
            acts = [n for n in node.input if self.is_act(n)]
            if not acts:
                continue  # constants only: folded at deployment
            if node.op_type not in ("Shape", "Size"):
                self.acts.update(o for o in node.output if o)
            self.propagate_bits(node)
            if id(node) not in self.skip:
                self.count_node(node)
            self.propagate_value_bits(node, acts)

    def count_node(self, node) -> None:
        if node.domain not in ("", "ai.onnx"):
            self.refuse(node)
        op = node.op_type
        if op == "Clip" and self.g.elem_type(node.input[0]) in _INT_TYPES:
            return  # the range of quantized codes
        if op in FREE_OPS:
            return
        if op in WEIGHT_OPS:
            self.weight_op(node)
        elif op == "BatchNormalization":
            self.bn_op(node)
        elif op in ELEMENTWISE_OPS:
            self.elementwise_op(node)
        else:
            self.refuse(node)

    def propagate_value_bits(self, node, acts: list[str]) -> None:
        """The graph's counterpart of rules.input_bits: 16 for a FLOAT16 / BFLOAT16 tensor and for what
        an fp16 layer (fp16 weights, 16-bit inputs) computes, carried through free, batch-norm and
        elementwise ops; else 32. The mults of activations, pooling and gates count at these bits."""
        passed = max((self.value_bits.get(name, 32) for name in acts), default=32)
        for out in node.output:
            if not out:
                continue
            if self.g.elem_type(out) in _HALF_TYPES:
                bits = 16
            elif out in self.layer_of:
                bits = self.infos[id(self.layer_of[out])][0].out_bits
            elif node.op_type in WEIGHT_OPS:
                bits = 32  # a MatMul's product before its bias Add, which carries the layer's bits
            else:
                bits = passed
            self.value_bits[out] = bits

    def _traced(self, kind: str, node, inputs: list[str], out: str, name: str | None = None):
        from mncli.scoring.tracer import TracedOp

        op = TracedOp(
            kind,
            name or self.node_name(node),
            node.op_type,
            [self.per_example(n) for n in inputs],
            self.per_example(out),
        )
        self.ops.append(op)
        self.op_out[id(op)] = out
        return op

    def weight_op(self, node) -> None:
        import numpy as np
        import torch

        from mncli.scoring.rules import LayerInfo, has_fp16_weights

        g, op_type = self.g, node.op_type
        inputs = list(node.input)
        attrs = _attrs(node)
        if op_type == "MatMul":
            data, weight = inputs[0], inputs[1]
            if self.is_act(weight) and not self.is_act(data):
                self.refuse(node, " (a constant left operand)")
            if self.is_act(weight):
                self.refuse(node, " (a product of two activations)")
        else:
            data, weight = inputs[0], inputs[1]
            if self.is_act(weight) or (op_type == "Gemm" and attrs.get("transA")):
                self.refuse(node, " (a weight computed from activations)")
        if any(self.is_act(n) for n in inputs[2:]):
            self.refuse(node, " (a bias computed from activations)")
        w = self.weight(node, weight)
        shape = w.values.shape
        if op_type == "Conv":
            c_out = int(shape[0])
        elif op_type == "Gemm":
            c_out = int(shape[0] if attrs.get("transB") else shape[-1])
        else:
            c_out = int(shape[-1])
        bias = inputs[2] if len(inputs) > 2 and inputs[2] else ""
        out = node.output[0]
        bias_node = None
        if not bias and op_type == "MatMul":  # MatMul + Add(constant bias): one linear layer with its bias
            users = g.consumers.get(out, [])
            if len(users) == 1 and users[0].op_type == "Add":
                other = next((n for n in users[0].input if n != out), "")
                if other and not self.is_act(other) and int(g.value(other).size) == c_out:
                    bias, bias_node = other, users[0]
        layer = w.main
        for suffix in ("_quantized", ".weight", "_weight"):
            layer = layer.removesuffix(suffix) if layer.endswith(suffix) and layer != suffix else layer
        first_use = w.main not in self.mains
        self.mains.add(w.main)
        name = (
            layer if layer and g.stored(w.main) and layer not in self._layer_names() else self.node_name(node)
        )
        final_out = bias_node.output[0] if bias_node is not None else out
        traced = self._traced(WEIGHT_OPS[op_type], node, [data], final_out, name=name)
        traced.layer = name
        traced.attrs = {"groups": int(attrs.get("group", 1)), "bias": bool(bias), "weight": w.main}
        if bias_node is not None:
            self.skip.add(id(bias_node))
        bias_values = 0
        if bias:
            bias_leaves, bias_nodes = g.leaves(bias)
            bias_values = int(g.value(bias).size)
            for dq in (n for n in bias_nodes if n.op_type == "DequantizeLinear"):
                container = type_bits(g.elem_type(dq.input[0])) or 32
                b, c = self._quant_params(list(dq.input[1:3]), container)
                w.extra_bits, w.extra_params = w.extra_bits + b, w.extra_params + c
            self.counted.update(leaf for leaf in bias_leaves if g.stored(leaf))
        act_bits_params = self.act_params(data)
        info = LayerInfo(
            fmt=w.fmt,
            n=int(w.values.size),
            nnz=int((w.values != 0).sum()),
            c_out=c_out,
            act_bits=int(self.bits.get(data, 32)),
            acc_bits=32,
            extra_param_bits=w.extra_bits + act_bits_params[0],
            extra_params=w.extra_params + act_bits_params[1],
            checked=True,
            fp16_weights=has_fp16_weights(w.fmt, torch.from_numpy(np.ascontiguousarray(w.values))),
        )
        self.infos[id(traced)] = (info, bias_values, first_use)
        self.layer_of[final_out] = traced

    def _layer_names(self) -> set[str]:
        return {op.name for op in self.ops if op.kind in ("conv", "linear")}

    def bn_op(self, node) -> None:
        data = node.input[0]
        if any(self.is_act(n) for n in node.input[1:]):
            self.refuse(node, " (parameters computed from activations)")
        scale = node.input[1]
        stem = scale.removesuffix(".weight") if scale.endswith(".weight") and self.g.stored(scale) else ""
        taken = {op.name for op in self.ops}
        traced = self._traced(
            "bn", node, [data], node.output[0], name=stem if stem and stem not in taken else None
        )
        traced.layer = node.input[1]
        traced.attrs = {"channels": int(self.g.value(node.input[1]).size)}
        producer = self.layer_of.get(data)
        if producer is not None and producer.attrs.get("bias") and producer.bias_merged_into is None:
            producer.bias_merged_into = traced.name
        first = node.input[1] not in self.counted
        self.counted.update(n for n in node.input[1:] if n and self.g.stored(n))
        self.bn_first[id(traced)] = first

    def _loose_operands(self, node, acts: list[str]) -> None:
        import torch

        for name in node.input:
            if not name or name in acts or name in self.counted:
                continue
            if self.g.elem_type(name) not in _FLOAT_TYPES:
                continue
            value = self.g.value(name)
            leaves, _ = self.g.leaves(name)
            stored = [leaf for leaf in leaves if self.g.stored(leaf) and leaf not in self.counted]
            if value.size <= 1 or not stored:
                continue  # scalars are literals
            self.counted.update(stored)
            dtype = torch.float16 if type_bits(self.g.elem_type(name)) <= 16 else torch.float32
            self.loose.append((name, torch.empty(tuple(value.shape), dtype=dtype, device="meta")))

    def elementwise_op(self, node) -> None:
        op_type = node.op_type
        kind = ELEMENTWISE_OPS[op_type]
        acts = [n for n in node.input if self.is_act(n)]
        out = node.output[0]
        if op_type in ("Min", "Max", "Clip") and len(acts) > 1:
            self.refuse(node, " (of two activations)")
        if op_type == "Mul" and len(acts) == 2:
            fused = self._fuse_gate(node, acts)
            if fused:
                return
        traced = self._traced(kind, node, acts, out)
        self.in_bits[id(traced)] = max(self.value_bits.get(name, 32) for name in acts)
        traced.constant_operand = len(acts) < 2 and kind in ("add", "mul", "div")
        attrs = _attrs(node)
        if kind in ("avgpool", "maxpool"):
            kernel = attrs.get("kernel_shape")
            if kernel is None:
                self.refuse(node, " (without kernel_shape)")
            traced.attrs = {"kernel": tuple(int(k) for k in kernel)}
        elif kind in ("mean", "reduce_max") and self._global_axes(node, acts[0]):
            # over every spatial position: global pooling, booked as the artifact's AdaptiveAvgPool2d(1)
            traced.kind = "adaptive_avgpool" if kind == "mean" else "adaptive_maxpool"
            spatial = len(traced.in_shapes[0]) - 1
            traced.out_shape = (traced.in_shapes[0][0], *([1] * spatial))
        self._loose_operands(node, acts)

    def _global_axes(self, node, data: str) -> bool:
        """A reduction over exactly the spatial axes (2, 3, ...) of an N x C x ... tensor."""
        rank = len(self.g.shape(data))
        axes = _attrs(node).get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = [int(a) for a in self.g.value(node.input[1]).reshape(-1)]
        if rank < 3 or axes is None:
            return False
        return sorted(int(a) % rank for a in axes) == list(range(2, rank))

    def _fuse_gate(self, node, acts: list[str]) -> bool:
        """x * Sigmoid(x) is one silu, x * HardSigmoid(x) one hard-swish (the rules' own rows)."""
        for gate_name in acts:
            gate = self.g.producer.get(gate_name)
            other = next((n for n in acts if n != gate_name), acts[0])
            if (
                gate is not None
                and gate.op_type in ("Sigmoid", "HardSigmoid")
                and gate.input[0] == other
                and len(self.g.consumers.get(gate_name, [])) == 1
            ):
                for op in reversed(self.ops):
                    if op.op == gate.op_type and self.op_out.get(id(op)) == gate_name:
                        op.kind = "silu" if gate.op_type == "Sigmoid" else "hardswish"
                        op.op = f"{gate.op_type}*x"
                        self.op_out[id(op)] = node.output[0]
                        return True
        return False

    # rows ----------------------------------------------------------------------------------------
    def rows(self) -> list:
        from mncli.scoring.rules import bn_row, check_freebie, elementwise_row, tensor_row, weight_row

        if self.opts.freebie16:
            check_freebie({op.name: self.infos[id(op)][0] for op in self.ops if id(op) in self.infos})
        rows = []
        for op in self.ops:
            if op.kind in ("conv", "linear"):
                info, bias_values, first_use = self.infos[id(op)]
                rows.append(weight_row(op, info, bias_values or info.c_out, self.opts, first_use))
            elif op.kind == "bn":
                rows.append(bn_row(op, self.opts, self.bn_first[id(op)]))
            else:
                rows.append(elementwise_row(op, self.opts, self.in_bits[id(op)]))
        for name, tensor in self.loose:
            rows.append(tensor_row(name, tensor, self.opts))
        rows.extend(self.qdq_rows())
        return rows

    def qdq_rows(self) -> list:
        """Quantizer scales on activations that no layer's input took (QDQ after ReLU, Add, pooling)."""
        from mncli.scoring.rules import Row

        rows = []
        for node in self.g.model.graph.node:
            if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or not self.is_act(node.input[0]):
                continue
            codes = node.output[0] if node.op_type == "QuantizeLinear" else node.input[0]
            container = type_bits(self.g.types.get(codes, 0) or self.g.elem_type(codes)) or 8
            bits, count = self._quant_params(list(node.input[1:3]), container)
            if count:
                rows.append(
                    Row(
                        name=self.node_name(node),
                        type="qdq",
                        op=node.op_type,
                        shape=self.per_example(node.output[0]),
                        param_bits=bits,
                        raw_params=count,
                    )
                )
        return rows


def score_onnx(
    graph: OnnxGraph,
    *,
    task: str = "cifar100",
    add_bits: int = 32,
    freebie16: bool = False,
    ternary_storage: str = "codes2",
    ternary_mults: str = "dense",
    infer: bool = False,
    accumulation: str = "flat",
    test_accuracy: float | None = None,
) -> dict:
    """Count an ONNX graph by the MicroNet rules; returns the `mncli score --json` object (a graph
    records no proved tree widths: under tree accumulation its integer layers are counted flat)."""
    from mncli.scoring.report import build_report, resolve_task
    from mncli.scoring.rules import Options

    opts = Options(add_bits, freebie16, ternary_storage, ternary_mults, infer, accumulation)
    opts.check()
    resolve_task(task)
    counter = _Counter(graph, opts)
    counter.count()
    rows = counter.rows()
    if not any(r.type in ("conv", "dwconv", "linear") for r in rows):
        raise BadInput(f"{graph.path}: no Conv, Gemm or MatMul layer with constant weights to score")
    return build_report(
        rows,
        task=task,
        opts=opts,
        input_shape=graph.input_shape,
        test_accuracy=test_accuracy,
        verified=True,
        warnings=counter.warnings,
    )


__all__ = ["ONNX_EXTRA", "OnnxGraph", "load_onnx", "require_onnx", "score_onnx", "type_bits"]
