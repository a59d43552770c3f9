"""Half precision for real: a layer converted here holds fp16-representable weights and bias (the
artifact stores them as float16) and rounds its input activations to fp16 (an `act_quant` with 16
bits), so evaluation sees exactly what an fp16 kernel would and `score` counts 16 bits as a fact.
The module keeps fp32 tensors holding fp16 values, so it still runs next to fp32 and int layers.
A ternary layer stays ternary in fp16: its codes are kept and only its two scales become fp16 values.
"""

from __future__ import annotations

import torch
from torch import nn

from mncli.compress.ternary.common import ternary_values
from mncli.models.quantized import ActQuantizer, attach


def round_to_fp16(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float16).to(t.dtype)


def convert_weights_fp16(module: nn.Module) -> None:
    """Round the layer's weight and bias to fp16 values in place."""
    with torch.no_grad():
        module.weight.data = round_to_fp16(module.weight)
        if getattr(module, "bias", None) is not None:
            module.bias.data = round_to_fp16(module.bias)


def round_ternary_fp16(module: nn.Module) -> tuple[float, float]:
    """Round a ternary layer's wp and wn (and its bias) to fp16 values in place, keeping every code;
    returns the rounded (wp, wn)."""
    weight = module.weight.detach()
    codes = torch.sign(weight).to(torch.int8)
    wp = round_to_fp16(weight.max().clamp(min=0.0))
    wn = round_to_fp16((-weight.min()).clamp(min=0.0))
    with torch.no_grad():
        module.weight.data = ternary_values(codes, float(wp), float(wn), weight.dtype).contiguous()
        if getattr(module, "bias", None) is not None:
            module.bias.data = round_to_fp16(module.bias)
    return float(wp), float(wn)


def attach_fp16_act(module: nn.Module) -> None:
    """Round the layer's input activations to fp16."""
    attach(module, ActQuantizer(16, signed=True, method="fp16"))
