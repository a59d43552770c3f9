"""Putting quantizers on a model, and taking them off again as real values.

`prepare_qat` wraps each planned layer for quantization-aware training (LSQ, PACT or DoReFa);
`prepare_ptq` sets post-training values and scales directly; `bake` turns the trained model into
real values (int weights = code * scale, deployed act quantizers) and returns the layer specs;
`apply_fp16` rounds what stays float to half precision for real. Layers the input has pruned (spec
"mask": true, `kept_masks`) keep their zeros in both the trained and the post-training codes; layers
whose input weights are ternary or int codes the plan keeps (`LayerPlan.keeps_codes`) stay frozen and
keep their format.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from mncli.compress.prune.masks import kept_masks
from mncli.compress.quant import intweights
from mncli.compress.quant.actquant import bake_act_quantizers
from mncli.compress.quant.dorefa import DorefaAct, DorefaWeight
from mncli.compress.quant.fp16 import attach_fp16_act, convert_weights_fp16, round_ternary_fp16
from mncli.compress.quant.lsq import LsqAct, LsqWeight
from mncli.compress.quant.pact import PactAct
from mncli.compress.quant.plan import LayerPlan
from mncli.compress.quant.ptq import InputStats, act_scale, weight_scale_and_codes
from mncli.errors import RuntimeFailure
from mncli.models import quantized
from mncli.models.quantized import ActQuantizer, attach
from mncli.storage import levels_for_bits


@dataclass
class QuantParams:
    """The quantizers' own trainable tensors: LSQ step sizes (no weight decay), PACT clips (L2)."""

    scales: list[nn.Parameter] = field(default_factory=list)
    clips: list[nn.Parameter] = field(default_factory=list)

    def clamp_(self) -> None:
        with torch.no_grad():
            for p in self.scales:
                p.clamp_(min=1e-8)
            for p in self.clips:
                p.clamp_(min=1e-4)


def _signed(stats: dict[str, InputStats], name: str) -> bool:
    return stats[name].signed if name in stats else True


def prepare_qat(
    model: nn.Module,
    plans: dict[str, LayerPlan],
    stats: dict[str, InputStats],
    method: str,
    specs: dict[str, dict],
    calibration: str | None = None,
    percentile: float = 99.99,
) -> QuantParams:
    """Wrap weights and attach training act quantizers; returns their trainable tensors. `specs` are
    the input's layer specs: its pruned layers' zeros stay zero through training.

    LSQ's step sizes start at the paper's 2 * mean|v| / sqrt(Q_P); with `calibration` (minmax or
    percentile) at PTQ's calibrated ranges instead (max |v|, or its percentile, at the largest code).
    At 8 bits the paper's init (sized for 2-4 bits) clips tails that PTQ keeps, and fine-tuning does
    not win all of it back (measured in the README, "The Fashion-MNIST track")."""
    modules = dict(model.named_modules())
    masks = kept_masks(model, specs, plans)
    params = QuantParams()
    for name, plan in plans.items():
        module = modules[name]
        if plan.keeps_codes:
            intweights.freeze_weight(module)
        elif plan.int_weight:
            weight_cls = LsqWeight if method == "lsq" else DorefaWeight
            quantizer = weight_cls(module.weight.detach(), plan.weight_bits, per_channel=plan.per_channel)
            if method == "lsq" and calibration is not None:
                scale, _ = weight_scale_and_codes(
                    module.weight, plan.weight_bits, plan.per_channel, calibration, percentile
                )
                with torch.no_grad():
                    quantizer.scale.copy_(scale.reshape(quantizer.scale.shape))
            mask = masks[name].to(module.weight.dtype) if name in masks else None
            intweights.wrap_weight(module, quantizer, mask)
            if method == "lsq":
                params.scales.append(quantizer.scale)
        if plan.int_act:
            signed = _signed(stats, name)
            if method == "lsq":
                act = LsqAct(plan.act_bits, signed)
                mean_abs = stats[name].first_mean_abs if name in stats else None
                if mean_abs is not None:
                    with torch.no_grad():
                        if calibration is not None:
                            calibrated = act_scale(
                                stats[name], plan.act_bits, signed, calibration, percentile
                            )
                            act.scale.copy_(calibrated)
                        else:
                            act.scale.fill_(max(2.0 * mean_abs / math.sqrt(act.q_p), 1e-8))
                    act.initialized = True
                params.scales.append(act.scale)
            elif method == "pact":
                act = PactAct(plan.act_bits, signed)
                params.clips.append(act.alpha)
            else:
                act = DorefaAct(plan.act_bits, signed)
            attach(module, act.to(module.weight.device))
    return params


def prepare_ptq(
    model: nn.Module,
    plans: dict[str, LayerPlan],
    stats: dict[str, InputStats],
    calibration: str,
    percentile: float,
    specs: dict[str, dict],
) -> None:
    """Post-training quantization: calibrated weights and activation scales, no training. `specs` are
    the input's layer specs: its pruned layers' zeros stay zero."""
    modules = dict(model.named_modules())
    masks = kept_masks(model, specs, plans)
    for name, plan in plans.items():
        module = modules[name]
        if plan.int_weight:
            scale, codes = weight_scale_and_codes(
                module.weight, plan.weight_bits, plan.per_channel, calibration, percentile
            )
            if name in masks:
                codes = codes * masks[name].to(codes.dtype)
            quantized.set_int_weight(module, scale, codes)
        if plan.int_act:
            signed = _signed(stats, name)
            scale = act_scale(stats[name], plan.act_bits, signed, calibration, percentile)
            method = f"ptq-{calibration}"
            attach(module, ActQuantizer(plan.act_bits, signed, method, scale=scale).to(module.weight.device))


def int_weight_spec(bits: int | float, per_channel: bool) -> dict:
    """The weight spec of int codes; fractional bits record the levels of their grid too."""
    spec: dict = {"format": "int", "bits": bits}
    if not float(bits).is_integer():
        spec["levels"] = levels_for_bits(bits)
    spec["per_channel"] = per_channel
    return spec


def bake(model: nn.Module, plans: dict[str, LayerPlan], specs: dict[str, dict]) -> dict[str, dict]:
    """Real values everywhere; returns the new specs (earlier stages' entries kept and extended)."""
    modules = dict(model.named_modules())
    new_specs = copy.deepcopy(specs)
    for name, plan in plans.items():
        module = modules[name]
        spec = new_specs.setdefault(name, {})
        spec.pop("act", None)  # an input's old act quantizer was removed; the ones attached now follow
        if intweights.is_wrapped(module):
            bits, per_channel = intweights.bake_weight(module)
            spec["weight"] = int_weight_spec(bits, per_channel)
        elif plan.int_weight:  # set by prepare_ptq
            spec["weight"] = int_weight_spec(plan.weight_bits, plan.per_channel)
        elif plan.ternary:
            module.weight.requires_grad_(True)
            continue
        elif plan.keep_int:  # the input's codes and spec, with its weight_scale
            module.weight.requires_grad_(True)
        else:  # trained as floats: fp32 values (an earlier fp16 claim no longer holds)
            spec["weight"] = {"format": "float", "bits": 32}
            continue
        try:  # what the codec will store: exactly code * scale, codes in the signed range of the grid
            quantized.check_int_weight(module.weight, module.weight_scale, spec["weight"]["bits"])
        except ValueError as exc:
            raise RuntimeFailure(f"layer {name}: baked weights are off their grid: {exc}") from None
    for name, act_spec in bake_act_quantizers(model).items():
        new_specs.setdefault(name, {})["act"] = act_spec
    return new_specs


def apply_fp16(model: nn.Module, plans: dict[str, LayerPlan], specs: dict[str, dict]) -> list[str]:
    """Round the float layers planned at 16 bits to fp16 for real; returns their names. Ternary and int
    layers keep their codes; a ternary layer with fp16 inputs computes in fp16, so its wp, wn (and
    bias) are rounded to fp16 values, which its spec records."""
    modules = dict(model.named_modules())
    converted = []
    for name, plan in plans.items():
        module, spec = modules[name], specs.setdefault(name, {})
        if plan.weight_bits == 16 and not plan.keeps_codes:
            convert_weights_fp16(module)
            spec["weight"] = {"format": "float", "bits": 16}
            converted.append(name)
        if plan.act_bits == 16:
            attach_fp16_act(module)
            spec["act"] = {"bits": 16, "signed": True, "method": "fp16"}
            if plan.ternary:
                spec["weight"]["wp"], spec["weight"]["wn"] = round_ternary_fp16(module)
    return converted
