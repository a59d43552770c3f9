"""Trace one forward pass and list every operation the MicroNet rules count, with its real shapes.

Two instruments work together:
* global module hooks: a call of a known module type (conv, linear, batch norm, activation, pooling,
  dropout, ...) is booked once as a unit, and everything that runs inside it (its activation quantizer,
  the functional call it wraps) is not seen again;
* a `TorchFunctionMode`: every torch function and tensor method called outside such a unit (residual
  `+`, squeeze-excite `*`, `F.relu`, `x.mean((2, 3))`, `torch.flatten`, ...) is booked by name.

Only operations on activations (tensors computed from the input) cost ops; operations on weights and
constants alone are folded at deployment. An operation on activations that the rules do not know is an
error naming it, never a silent zero. Each op records where its inputs came from (`TracedOp.inputs`: the
counted ops whose outputs they hold, through free ops, and their dtypes), so the rules can count it at
the bits of its inputs. Tracing runs on the meta device when it can (shapes only, no memory), with
the model's parameters swapped for meta tensors by `torch.func.functional_call`.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode, resolve_name

from mncli.errors import BadInput
from mncli.scoring.metashapes import meta_shortcut
from mncli.scoring.optable import FREE, FUNCTION_KINDS, module_kind, short_name


@dataclass
class OpInput:
    """Where one input tensor of an op came from, for the bits the op runs at."""

    dtype_bits: int  # 16 for a float16/bfloat16 tensor, else 32
    producers: tuple[TracedOp, ...] = ()  # counted ops whose output it holds (through free ops); ()
    # for the model input and for stored or constant operands


@dataclass
class TracedOp:
    """One counted operation: a module unit or a functional op, with shapes per example (batch 1)."""

    kind: str
    name: str
    op: str  # module class or resolved function name, for messages and the table
    in_shapes: list[tuple[int, ...]]
    out_shape: tuple[int, ...]
    layer: str | None = None  # spec key (module name) of a layer with weights
    attrs: dict[str, Any] = field(default_factory=dict)
    bias_merged_into: str | None = None  # a conv/linear bias folded into the batch norm that follows
    constant_operand: bool = False  # binary op with a weight/constant operand (not two activations)
    inputs: list[OpInput] = field(default_factory=list, repr=False, compare=False)  # activations, operands


@dataclass
class _Origin:
    """The counted ops an activation tensor holds the output of."""

    ref: weakref.ref
    ops: tuple[TracedOp, ...]
    booked: bool  # the output of ops[0] itself, not a view or copy of it


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, list | tuple):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _dtype_bits(t: torch.Tensor) -> int:
    return 16 if t.dtype in (torch.float16, torch.bfloat16) else 32


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape[1:]) if t.dim() > 0 else ()


def numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape) if shape else 1


class _Tracer(TorchFunctionMode):
    def __init__(self, model: nn.Module, tensor_names: dict[int, str]):
        super().__init__()
        self.module_names = {id(m): n for n, m in model.named_modules()}
        self.tensor_names = tensor_names  # id of the (meta) parameter/buffer -> state-dict name
        self.ops: list[TracedOp] = []
        self.used_tensors: dict[str, str] = {}  # loose parameter -> first op using it
        self._acts: dict[int, weakref.ref] = {}
        self._producers: dict[int, _Origin] = {}  # id of an activation -> the ops it holds the output of
        self._scope: list[str] = []
        self._unit_depth = 0
        self._busy = False
        self._counts: dict[str, int] = {}

    # activations -------------------------------------------------------------------------------
    def mark(self, obj: Any) -> None:
        for t in _tensors(obj):
            self._acts[id(t)] = weakref.ref(t)

    def is_act(self, t: torch.Tensor) -> bool:
        ref = self._acts.get(id(t))
        return ref is not None and ref() is t

    def _origin(self, t: torch.Tensor) -> _Origin | None:
        origin = self._producers.get(id(t))
        return origin if origin is not None and origin.ref() is t else None

    def _inputs(self, tensors: list[torch.Tensor]) -> list[OpInput]:
        """The activations and the float operands (weights, constants) of an op, with their origins."""
        inputs = []
        for t in tensors:
            if not (self.is_act(t) or t.is_floating_point()):
                continue
            origin = self._origin(t)
            inputs.append(OpInput(_dtype_bits(t), origin.ops if origin is not None else ()))
        return inputs

    def _produced(self, outs: list[torch.Tensor], op: TracedOp) -> None:
        for t in outs:
            self._producers[id(t)] = _Origin(weakref.ref(t), (op,), booked=True)

    def _pass_through(self, inputs: list[torch.Tensor], outs: list[torch.Tensor]) -> None:
        """A free op's outputs hold what its activation inputs held."""
        ops: dict[int, TracedOp] = {}
        for t in inputs:
            origin = self._origin(t) if self.is_act(t) else None
            for op in origin.ops if origin is not None else ():
                ops.setdefault(id(op), op)
        for t in outs:
            self._producers[id(t)] = _Origin(weakref.ref(t), tuple(ops.values()), booked=False)

    def _name(self, op: str) -> str:
        scope = self._scope[-1] if self._scope else ""
        base = f"{scope}:{op}" if scope else op
        self._counts[base] = self._counts.get(base, 0) + 1
        count = self._counts[base]
        return base if count == 1 else f"{base}#{count}"

    # module units ------------------------------------------------------------------------------
    def pre_hook(self, module: nn.Module, args: tuple) -> None:
        if self._busy:
            return
        self._busy = True
        try:
            self._scope.append(self.module_names.get(id(module), type(module).__name__))
            if self._unit_depth:
                self._unit_depth += 1
            elif module_kind(module) is not None:
                self._unit_depth = 1
                module._mncli_trace_inputs = [t for t in _tensors(args)]  # noqa: SLF001
        finally:
            self._busy = False

    def post_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self._busy:
            return
        self._busy = True
        try:
            name = self._scope.pop() if self._scope else type(module).__name__
            if not self._unit_depth:
                return
            self._unit_depth -= 1
            if self._unit_depth == 0:
                inputs = module.__dict__.pop("_mncli_trace_inputs", [])
                self._book_module(module, name, inputs, output)
        finally:
            self._busy = False

    def _book_module(self, module: nn.Module, name: str, inputs: list, output: Any) -> None:
        kind = module_kind(module)
        outs = list(_tensors(output))
        if any(self.is_act(t) for t in inputs):
            self.mark(outs)
        else:  # a unit applied to constants only (never in a plain CNN): folded at deployment
            return
        if kind == "free" or not outs:
            self._pass_through(inputs, outs)
            return
        label = name or type(module).__name__  # the root module has the empty name
        op = TracedOp(kind, label, type(module).__name__, [_shape(t) for t in inputs], _shape(outs[0]))
        op.inputs = self._inputs(inputs)
        self._produced(outs, op)
        if kind in ("conv", "linear"):
            op.layer = name
            op.attrs = {"groups": getattr(module, "groups", 1), "bias": module.bias is not None}
            op.attrs["weight"] = f"{name}.weight" if name else "weight"
        elif kind == "bn":
            op.layer = name
            op.attrs = {"channels": module.num_features}
            self._merge_bias(op, inputs[0] if inputs else None)
        elif kind in ("avgpool", "maxpool"):
            op.attrs = {"kernel": module.kernel_size}
        self.ops.append(op)

    def _merge_bias(self, bn: TracedOp, inp: torch.Tensor | None) -> None:
        if inp is None:
            return
        origin = self._origin(inp)
        if origin is not None and origin.booked and origin.ops[0].attrs.get("bias"):
            origin.ops[0].bias_merged_into = bn.name

    # functional ops ----------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = meta_shortcut(func, args, kwargs)
        if out is None:
            out = func(*args, **kwargs)
        if self._unit_depth or self._busy:
            return out
        self._busy = True
        try:
            self._book_function(func, args, kwargs, out)
        finally:
            self._busy = False
        return out

    def _book_function(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        name = short_name(func)
        if name == "property":
            return
        inputs = list(_tensors(args)) + list(_tensors(kwargs))
        acts = [t for t in inputs if self.is_act(t)]
        loose = [self.tensor_names[id(t)] for t in inputs if id(t) in self.tensor_names]
        if not acts:  # weights and constants only: computed once at deployment; the weights are stored
            self._use(loose, "")
            return
        self.mark(out)
        if name in FREE:
            self._pass_through(inputs, list(_tensors(out)))
            self._use(loose, "")
            return
        kind = FUNCTION_KINDS.get(name)
        if kind is None:
            scope = self._scope[-1] if self._scope else "the model"
            raise BadInput(
                f"cannot score: op {resolve_name(func) or name!r} in {scope or 'the model'} is not in the "
                "MicroNet counting rules",
                hint="supported: conv, linear, batch norm, relu/relu6/hardtanh, silu, sigmoid, hardswish, "
                "hardsigmoid, add/sub, mul/div, avg/max/global pooling, mean/sum, shape ops, dropout",
            )
        outs = list(_tensors(out))
        if not outs:
            return
        op = TracedOp(
            kind, self._name(name), resolve_name(func) or name, [_shape(t) for t in acts], _shape(outs[0])
        )
        op.inputs = self._inputs(inputs)
        self._produced(outs, op)
        if kind in ("conv", "linear", "bn"):
            self._functional_layer(op, args, kwargs, acts[0])
            loose = []
        elif kind in ("add", "mul", "div"):
            op.constant_operand = len(acts) < 2
        elif kind in ("avgpool", "maxpool"):
            kernel = kwargs.get("kernel_size", args[1] if len(args) > 1 else None)
            op.attrs = {"kernel": kernel}
        self.ops.append(op)
        self._use(loose, op.name)

    def _functional_layer(self, op: TracedOp, args: tuple, kwargs: dict, inp: torch.Tensor) -> None:
        params = [t for t in list(_tensors(args)) + list(_tensors(kwargs)) if id(t) in self.tensor_names]
        if not params:
            raise BadInput(
                f"cannot score: functional {op.op} in {op.name} uses weights that are not parameters"
            )
        first = self.tensor_names[id(params[0])]
        op.layer = first.rsplit(".", 1)[0] if "." in first else ""
        op.name = op.layer or op.name
        if op.kind == "bn":
            op.attrs = {"channels": int(inp.shape[1])}
            self._merge_bias(op, inp)
        else:
            weight = kwargs.get("weight", args[1] if len(args) > 1 else None)
            bias = kwargs.get("bias", args[2] if len(args) > 2 else None)
            groups = kwargs.get("groups", args[6] if op.kind == "conv" and len(args) > 6 else 1)
            op.attrs = {"groups": int(groups), "bias": bias is not None}
            op.attrs["weight"] = self.tensor_names.get(id(weight), f"{op.layer}.weight")

    def _use(self, names: list[str], op_name: str) -> None:
        for name in names:
            self.used_tensors.setdefault(name, op_name)


def _meta_like(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(t.shape, dtype=t.dtype, device="meta")


def trace(
    model: nn.Module, input_shape: tuple[int, ...], *, meta: bool = True
) -> tuple[list[TracedOp], dict]:
    """Run one forward pass of a batch of one and return (ops, loose tensors used by functional ops).

    With `meta`, parameters and buffers are swapped for meta tensors (no values, no memory)."""
    state = dict(model.named_parameters(remove_duplicate=False))
    state.update(dict(model.named_buffers(remove_duplicate=False)))
    if meta:
        swapped = {name: _meta_like(t) for name, t in state.items()}
        x = torch.empty((1, *input_shape), device="meta")
    else:
        swapped = state
        device = next((t.device for t in state.values()), torch.device("cpu"))
        x = torch.zeros((1, *input_shape), device=device)
    tensor_names = {id(t): name for name, t in swapped.items()}
    tracer = _Tracer(model, tensor_names)
    tracer.mark(x)
    handles = [
        nn.modules.module.register_module_forward_pre_hook(tracer.pre_hook),
        nn.modules.module.register_module_forward_hook(tracer.post_hook),
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), tracer:
            torch.func.functional_call(model, swapped, (x,), strict=False, tie_weights=True)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
        for module in model.modules():
            module.__dict__.pop("_mncli_trace_inputs", None)
    return tracer.ops, tracer.used_tensors
