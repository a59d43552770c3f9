"""Input-activation quantizers: an `act_quant` child module on a conv/linear layer, called from a forward
pre-hook, so the layer sees exactly the values the deployed integer (or fp16) kernel would see.

Deployed form (what artifacts hold and `install_act_quantizers` recreates): `ActQuantizer` with a
`scale` buffer; forward = clamp(round(x / scale), -Q_N, Q_P) * scale in every mode. Bits 16 means the
activations are rounded to IEEE half precision (no scale). Training forms (LSQ, PACT, DoReFa) live in
their own modules and are replaced by `ActQuantizer` when the model is baked.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from mncli.compress.lsq import fake_quantize, qrange, quantize_to_codes
from mncli.errors import BadInput

ACT_QUANT = "act_quant"
FLOAT_BITS = (16, 32)


class ActQuantizer(nn.Module):
    """The deployed input quantizer of one layer (`bits` 2-8 integer codes, or 16 = fp16 rounding)."""

    def __init__(self, bits: int, signed: bool, method: str = "lsq", scale: torch.Tensor | None = None):
        super().__init__()
        self.bits, self.signed, self.method = int(bits), bool(signed), str(method)
        self.is_float = self.bits == 16
        if self.is_float:
            self.q_n = self.q_p = 0
        else:
            self.q_n, self.q_p = qrange(self.bits, self.signed)
            init = torch.ones(1) if scale is None else scale.detach().float().reshape(1).clone()
            self.register_buffer("scale", init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_float:
            return x.to(torch.float16).to(x.dtype)
        return fake_quantize(x, self.scale, self.q_n, self.q_p)

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """The integer codes the deployed kernel multiplies (int32)."""
        if self.is_float:
            raise ValueError("an fp16 activation quantizer has no integer codes")
        return quantize_to_codes(x, self.scale, self.q_n, self.q_p)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}, method={self.method}"


def _quantize_input(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: quantize the layer's input with its `act_quant` child (module-level so that
    copy.deepcopy of a model keeps working hooks)."""
    quantizer = getattr(module, ACT_QUANT, None)
    if quantizer is None or not args:
        return args
    return (quantizer(args[0]), *args[1:])


def _has_hook(module: nn.Module) -> bool:
    return any(hook is _quantize_input for hook in module._forward_pre_hooks.values())


def attach(module: nn.Module, quantizer: nn.Module) -> None:
    """Set `module.act_quant = quantizer` and make sure the pre-hook calls it (once)."""
    setattr(module, ACT_QUANT, quantizer)
    if not _has_hook(module):
        module.register_forward_pre_hook(_quantize_input)


def detach(module: nn.Module) -> None:
    """Remove the act quantizer of one layer and its hook."""
    for key, hook in list(module._forward_pre_hooks.items()):
        if hook is _quantize_input:
            del module._forward_pre_hooks[key]
    if ACT_QUANT in module._modules:
        del module._modules[ACT_QUANT]


def act_quantized_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module, nn.Module]]:
    """(layer name, layer, its act quantizer) for every layer that has one."""
    for name, module in model.named_modules():
        quantizer = module._modules.get(ACT_QUANT) if hasattr(module, "_modules") else None
        if quantizer is not None:
            yield name, module, quantizer


def remove_act_quantizers(model: nn.Module) -> int:
    """Strip every act quantizer (e.g. before re-quantizing); returns how many there were."""
    layers = [module for _, module, _ in act_quantized_layers(model)]
    for module in layers:
        detach(module)
    return len(layers)


def _check_act_spec(name: str, act: dict) -> tuple[int, bool, str]:
    try:
        bits, signed, method = int(act["bits"]), bool(act.get("signed", True)), str(act.get("method", "lsq"))
    except (KeyError, TypeError, ValueError) as exc:
        raise BadInput(f"layer {name}: malformed activation spec {act!r}") from exc
    if not (2 <= bits <= 8 or bits in FLOAT_BITS):
        raise BadInput(f"layer {name}: activation bits {bits} not supported (2-8, 16 or 32)")
    return bits, signed, method


def install_act_quantizers(model: nn.Module, specs: dict[str, dict]) -> nn.Module:
    """Recreate the deployed act quantizers that `specs` describe, and the `weight_scale` buffers of
    int layers, as placeholders that load_state_dict then fills. Layers whose act bits are 32 (or
    absent) get no act quantizer. Returns the model."""
    from mncli.compress.intweights import install_weight_scale

    modules = dict(model.named_modules())
    for name, spec in specs.items():
        if not isinstance(spec, dict):
            continue
        weight = spec.get("weight") or {}
        if weight.get("format") == "int" and name in modules:
            install_weight_scale(modules[name], bool(weight.get("per_channel", False)))
        act = spec.get("act")
        if not act:
            continue
        bits, signed, method = _check_act_spec(name, act)
        if bits == 32:
            continue
        if name not in modules:
            raise BadInput(
                f"the specs name an activation quantizer on {name!r}, which the model does not have"
            )
        attach(modules[name], ActQuantizer(bits, signed, method))
    return model


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
