"""Integer simulation of each layer's accumulator, to back a claim of fewer than 32 accumulator bits.

For a layer with integer weight codes w (int layers: weight / weight_scale; ternary layers: sign(w), the
+1 and -1 inputs being what the hardware sums) and integer activation codes x (from its `act_quant`),
every output is a sum of products w_i * x_i (plus the bias in units of s_w * s_x for int layers).
Whatever order the hardware adds them in, every partial sum lies between the sum of the negative
products and the sum of the positive products, so checking those two bounds against the signed N-bit
range proves that no partial sum overflows. Both are computed exactly in float64 with the layer's own
conv/linear arithmetic (stride, padding, groups), over real validation batches.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mncli.errors import BadInput
from mncli.models.quantized import ACT_QUANT, WEIGHT_SCALE, ActQuantizer, int_codes


@dataclass
class AccumulatorRange:
    max_positive: int = 0  # largest sum of positive products seen
    min_negative: int = 0  # smallest sum of negative products seen

    @property
    def bits_needed(self) -> int:
        return bits_for_range(self.min_negative, self.max_positive)


def bits_for_range(low: int, high: int) -> int:
    """Smallest signed width n with -2^(n-1) <= low and high <= 2^(n-1) - 1."""
    n = 2
    while not (-(2 ** (n - 1)) <= low and high <= 2 ** (n - 1) - 1):
        n += 1
    return n


def integer_layers(model: nn.Module, specs: dict[str, dict]) -> dict[str, nn.Module]:
    """Layers whose multiplies are integer x integer: int or ternary weights and integer activations."""
    modules = dict(model.named_modules())
    chosen = {}
    for name, spec in specs.items():
        weight_format = (spec.get("weight") or {}).get("format")
        module = modules.get(name)
        quantizer = getattr(module, ACT_QUANT, None) if module is not None else None
        if (
            weight_format in ("int", "ternary")
            and isinstance(quantizer, ActQuantizer)
            and not quantizer.is_float
        ):
            chosen[name] = module
    return chosen


def _weight_codes(module: nn.Module, weight_format: str) -> torch.Tensor:
    if weight_format == "ternary":
        return torch.sign(module.weight.detach()).double()
    return int_codes(module.weight, getattr(module, WEIGHT_SCALE)).double()


def _apply(module: nn.Module, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.Linear):
        return F.linear(x, w)
    return module._conv_forward(x, w, None)


def _bias_codes(module: nn.Module, quantizer: ActQuantizer, weight_format: str) -> torch.Tensor | None:
    bias = getattr(module, "bias", None)
    if bias is None or weight_format != "int":
        return None
    w_scale = getattr(module, WEIGHT_SCALE).detach().double().flatten()
    return torch.round(bias.detach().double() / (w_scale * quantizer.scale.double()))


def _channel_view(t: torch.Tensor, module: nn.Module, out_dim: int) -> torch.Tensor:
    shape = [1] * out_dim
    shape[1 if not isinstance(module, nn.Linear) else -1] = -1
    return t.reshape(shape)


def simulate_accumulators(
    model: nn.Module,
    specs: dict[str, dict],
    batches: Iterable,
    device: torch.device | str = "cpu",
    max_batches: int | None = None,
) -> dict[str, AccumulatorRange]:
    """Run the model on `batches` and record each integer layer's accumulator range."""
    layers = integer_layers(model, specs)
    ranges = {name: AccumulatorRange() for name in layers}
    handles = []
    for name, module in layers.items():
        weight_format = specs[name]["weight"]["format"]
        w = _weight_codes(module, weight_format)
        w_pos, w_neg = w.clamp(min=0), w.clamp(max=0)
        quantizer: ActQuantizer = getattr(module, ACT_QUANT)
        bias = _bias_codes(module, quantizer, weight_format)

        def hook(_q, args, _name=name, _module=module, _wp=w_pos, _wn=w_neg, _bias=bias, _q_mod=quantizer):
            x = _q_mod.codes(args[0]).double()
            x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
            positive = _apply(_module, x_pos, _wp.to(x.device))
            negative = _apply(_module, x_pos, _wn.to(x.device))
            if bool((x_neg != 0).any()):
                positive = positive + _apply(_module, x_neg, _wn.to(x.device))
                negative = negative + _apply(_module, x_neg, _wp.to(x.device))
            if _bias is not None:
                b = _channel_view(_bias.to(x.device), _module, positive.dim())
                positive = positive + b.clamp(min=0)
                negative = negative + b.clamp(max=0)
            r = ranges[_name]
            r.max_positive = max(r.max_positive, int(positive.max()))
            r.min_negative = min(r.min_negative, int(negative.min()))

        handles.append(quantizer.register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i, (x, _) in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    break
                model(x.to(device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return ranges


def check_claim(ranges: dict[str, AccumulatorRange], bits: int) -> dict[str, int]:
    """Bits each layer needs; BadInput naming the worst layer when a claim of `bits` overflows."""
    if not ranges:
        raise BadInput(
            f"--accumulator-bits {bits}: no layer has integer weights and integer activations",
            hint="quantize weights and activations (e.g. --weight-bits 8 --act-bits 8) first",
        )
    needed = {name: r.bits_needed for name, r in ranges.items()}
    over = {name: n for name, n in needed.items() if n > bits}
    if over:
        worst = max(over, key=over.get)
        r = ranges[worst]
        more = f"; {len(over) - 1} more layers overflow too" if len(over) > 1 else ""
        raise BadInput(
            f"accumulator overflow: layer {worst} needs {over[worst]} bits (partial sums from "
            f"{r.min_negative} to {r.max_positive}), more than --accumulator-bits {bits}{more}",
            hint=f"claim --accumulator-bits {max(needed.values())} or more, or quantize to fewer bits",
        )
    return needed
