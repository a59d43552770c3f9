"""Half precision for real: a layer converted here holds fp16-representable weights and bias (the
artifact stores them as float16) and rounds its input activations to fp16 (an `act_quant` with 16
bits), so evaluation sees exactly what an fp16 kernel would and `score` counts 16 bits as a fact.
The module keeps fp32 tensors holding fp16 values, so it still runs next to fp32 and int layers.
"""

from __future__ import annotations

import torch
from torch import nn

from mncli.models.quantized import ActQuantizer, attach


def round_to_fp16(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float16).to(t.dtype)


def convert_weights_fp16(module: nn.Module) -> None:
    """Round the layer's weight and bias to fp16 values in place."""
    with torch.no_grad():
        module.weight.data = round_to_fp16(module.weight)
        if getattr(module, "bias", None) is not None:
            module.bias.data = round_to_fp16(module.bias)


def attach_fp16_act(module: nn.Module) -> None:
    """Round the layer's input activations to fp16."""
    attach(module, ActQuantizer(16, signed=True, method="fp16"))
