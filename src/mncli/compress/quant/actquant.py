"""Baking of input-activation quantizers: the training forms (LSQ, PACT, DoReFa) are replaced by the
deployed `ActQuantizer` of mncli.models.quantized, which artifacts hold and loading recreates."""

from __future__ import annotations

from torch import nn

from mncli.models.quantized import ActQuantizer, act_quantized_layers, attach


def bake_act_quantizers(model: nn.Module) -> dict[str, dict]:
    """Replace training quantizers (LSQ/PACT/DoReFa) by deployed `ActQuantizer`s with the same
    forward in eval mode; returns the act spec per layer."""
    specs: dict[str, dict] = {}
    for name, module, quantizer in list(act_quantized_layers(model)):
        if not isinstance(quantizer, ActQuantizer):
            quantizer = ActQuantizer(
                quantizer.bits, quantizer.signed, quantizer.method, scale=quantizer.deployed_scale()
            )
            weight = getattr(module, "weight", None)
            attach(module, quantizer.to(weight.device) if weight is not None else quantizer)
        specs[name] = {"bits": quantizer.bits, "signed": quantizer.signed, "method": quantizer.method}
    return specs
