"""The deployed form of quantized layers, part of what a model in memory is (the training forms that
produce them live in mncli.compress.quant).

Integer weights hold code * scale for real, with the scale kept as the layer's `weight_scale` buffer.
An input-activation quantizer is an `ActQuantizer` child named `act_quant` on a conv/linear layer,
called from a forward pre-hook, so the layer sees exactly the values the deployed integer (or fp16)
kernel would see: clamp(round(x / scale), -Q_N, Q_P) * scale. Bits 16 means IEEE half rounding.
`install_act_quantizers(model, specs)` recreates both from an artifact's layer specs.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from mncli.errors import BadInput
from mncli.storage import code_range, levels_for_bits


def qrange(bits: float, signed: bool) -> tuple[int, int]:
    """(Q_N, Q_P): codes lie in [-Q_N, Q_P], L = 2^b of them (floor(2^b) for fractional weight bits,
    mncli.storage.levels_for_bits). Signed: two's complement for whole bits, -(L // 2)..(L - 1) // 2
    in general (-2..2 for the 5 levels of 2.5 bits); unsigned: [0, L - 1]."""
    levels = levels_for_bits(bits)
    if signed:
        low, high = code_range(levels)
        return -low, high
    return 0, levels - 1


def quantize_to_codes(v: torch.Tensor, s: torch.Tensor, q_n: int, q_p: int) -> torch.Tensor:
    """Integer codes round(clip(v / s, -Q_N, Q_P)) as int32; values are codes.float() * s."""
    return torch.clamp(torch.round(v / s), -q_n, q_p).to(torch.int32)


def fake_quantize(v: torch.Tensor, s: torch.Tensor, q_n: int, q_p: int) -> torch.Tensor:
    """The deployed quantizer: codes * s, computed so it equals the codec's decode bit for bit."""
    return quantize_to_codes(v, s, q_n, q_p).to(v.dtype) * s.to(v.dtype)


WEIGHT_SCALE = "weight_scale"


def set_int_weight(module: nn.Module, scale: torch.Tensor, codes: torch.Tensor) -> None:
    """Make the module hold code * scale for real, and record the scale as `weight_scale`."""
    weight = module.weight
    scale = scale.detach().float().to(weight.device)
    values = codes.to(weight.device).float() * scale
    with torch.no_grad():
        weight.data = values.to(weight.dtype).reshape(weight.shape).contiguous()
    if WEIGHT_SCALE in module._buffers:
        module._buffers[WEIGHT_SCALE] = scale.clone()
    else:
        module.register_buffer(WEIGHT_SCALE, scale.clone())


def int_codes(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Integer codes of a baked weight (exact: weight == codes * scale)."""
    return torch.round(weight.detach().float() / scale.float()).to(torch.int64)


def check_int_weight(weight: torch.Tensor, scale: torch.Tensor, bits: float) -> None:
    """Raise ValueError unless weight == code * scale exactly with codes in the signed b-bit range."""
    codes = int_codes(weight, scale)
    q_n, q_p = qrange(bits, signed=True)
    if int(codes.min()) < -q_n or int(codes.max()) > q_p:
        raise ValueError(f"codes outside the {bits:g}-bit range [{-q_n}, {q_p}]")
    if not torch.equal(codes.float() * scale.float(), weight.detach().float()):
        raise ValueError("weight values are not exactly code * scale")


def scale_shape(weight_shape: torch.Size | tuple[int, ...], per_channel: bool) -> tuple[int, ...]:
    """Shape of `weight_scale` for a weight of this shape."""
    if not per_channel:
        return (1,)
    return (int(weight_shape[0]),) + (1,) * (len(weight_shape) - 1)


def install_weight_scale(module: nn.Module, per_channel: bool) -> None:
    """Register a placeholder `weight_scale` buffer so a state dict holding one can be loaded."""
    if WEIGHT_SCALE not in module._buffers:
        shape = scale_shape(module.weight.shape, per_channel)
        module.register_buffer(WEIGHT_SCALE, torch.ones(shape, device=module.weight.device))


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
