"""MicroNet Challenge scoring by tracing the real model.

    report = score_model(model, specs, input_shape=(3, 32, 32), task="cifar100")
    print(summary(report))

`report` is the `mncli score --json` object: params, mults, adds, ops (weighted by bits/32), score,
baseline, conventions, accuracy and one row per counted op in `layers`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mncli.errors import BadInput, MncliError, RuntimeFailure
from mncli.scoring.metashapes import meta_device
from mncli.scoring.report import TASKS, build_report, resolve_task, summary
from mncli.scoring.rules import (
    Options,
    Row,
    bn_row,
    check_freebie,
    elementwise_row,
    input_bits,
    layer_info,
    tensor_row,
    weight_row,
)
from mncli.scoring.tracer import TracedOp, trace

__all__ = ["TASKS", "Options", "meta_device", "resolve_task", "score_model", "summary", "trace_model"]


def trace_model(model: nn.Module, input_shape: Sequence[int]) -> tuple[list[TracedOp], dict[str, str]]:
    """Trace on the meta device (shapes only); fall back to one real forward pass of zeros when an op of
    the model has no meta implementation."""
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s <= 0 for s in shape):
        raise BadInput(f"input shape must be positive integers (C, H, W), got {tuple(input_shape)}")
    try:
        return trace(model, shape, meta=True)
    except MncliError:
        raise
    except (NotImplementedError, RuntimeError) as exc:
        first = next(iter(model.parameters()), None)
        if first is not None and first.is_meta:
            raise RuntimeFailure(f"cannot trace the model on the meta device: {exc}") from exc
        from mncli.log import log

        log(f"tracing with real tensors (meta tracing failed: {str(exc).splitlines()[0][:120]})")
        try:
            return trace(model, shape, meta=False)
        except MncliError:
            raise
        except Exception as exc2:  # noqa: BLE001 - the model's own forward failed: one clear line
            raise RuntimeFailure(f"the model's forward pass failed on input {shape}: {exc2}") from exc2


def score_model(
    model: nn.Module,
    specs: dict[str, dict] | None,
    *,
    input_shape: Sequence[int],
    task: str = "cifar100",
    add_bits: int = 32,
    freebie16: bool = False,
    ternary_storage: str = "codes2",
    ternary_mults: str = "dense",
    infer: bool = False,
    accumulation: str = "flat",
    test_accuracy: float | None = None,
) -> dict:
    """Count a model by the MicroNet rules; returns the `mncli score --json` object.

    `specs` are the per-layer compression specs (docs/architecture.md); weight claims are verified
    against the values, sparsity is measured per tensor. A model on the meta device is counted dense
    with its claims unverified. The bits each op's inputs hold follow the traced ops that produced
    them (`rules.input_bits`)."""
    opts = Options(add_bits, freebie16, ternary_storage, ternary_mults, infer, accumulation)
    opts.check()
    resolve_task(task)
    specs = dict(specs or {})
    ops, loose = trace_model(model, input_shape)
    modules = dict(model.named_modules())
    state: dict[str, torch.Tensor] = dict(model.named_parameters(remove_duplicate=False))
    state.update(dict(model.named_buffers(remove_duplicate=False)))

    infos = {}
    for op in ops:
        if op.kind in ("conv", "linear") and op.layer not in infos:
            weight = state.get(op.attrs["weight"])
            if weight is None:  # a parametrized weight (pruning/quantization while training) is computed
                weight = getattr(modules.get(op.layer), "weight", None)
            if weight is None:
                raise RuntimeFailure(f"layer {op.layer}: weight {op.attrs['weight']} not found in the model")
            with torch.no_grad():
                infos[op.layer] = layer_info(op.layer, weight, state, specs.get(op.layer, {}), modules, opts)
    if opts.freebie16:
        check_freebie(infos)

    rows: list[Row] = []
    seen: set[str] = set()
    produced: dict[int, int] = {}  # id of a traced op -> bits of its output
    for op in ops:
        first_use = op.layer not in seen
        if op.layer is not None:
            seen.add(op.layer)
        in_bits = input_bits(op, produced)
        if op.kind in ("conv", "linear"):
            info = infos[op.layer]
            produced[id(op)] = info.out_bits
            bias = state.get(f"{op.layer}.bias" if op.layer else "bias")
            bias_values = bias.numel() if bias is not None else info.c_out
            rows.append(weight_row(op, info, bias_values, opts, first_use))
        elif op.kind == "bn":
            produced[id(op)] = in_bits  # a bias add: its output holds what its input held
            rows.append(bn_row(op, opts, first_use))
        else:
            produced[id(op)] = in_bits
            rows.append(elementwise_row(op, opts, in_bits))
    for name in loose:
        rows.append(tensor_row(name, state[name], opts))

    warnings = [f"spec for {name!r} names no traced layer" for name in specs if name not in seen]
    verified = all(info.checked for info in infos.values())
    return build_report(
        rows,
        task=task,
        opts=opts,
        input_shape=tuple(int(s) for s in input_shape),
        test_accuracy=test_accuracy,
        verified=verified,
        warnings=warnings,
    )
