"""n-bit integer weights: fake-quantized training (a weight parametrization) and baking.

While training, `module.weight` is computed from a latent fp32 weight by the layer's quantizer (LSQ or
DoReFa) times the fixed pruning mask, so pruned weights stay exactly zero. Baking replaces the
parametrization by the real values code.float() * scale (what the codec's decode reproduces bit for
bit) and keeps the scale as the `weight_scale` buffer of the module (shape [1], or one per output
channel shaped to broadcast against the weight).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from mncli.compress.lsq import qrange

WEIGHT_SCALE = "weight_scale"


class WeightFakeQuant(nn.Module):
    """Parametrization: latent weight -> quantizer(latent) * mask."""

    def __init__(self, quantizer: nn.Module, mask: torch.Tensor | None = None):
        super().__init__()
        self.quantizer = quantizer
        self.register_buffer("mask", None if mask is None else mask.detach().clone())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        q = self.quantizer(w)
        return q if self.mask is None else q * self.mask.to(q.dtype)


def wrap_weight(module: nn.Module, quantizer: nn.Module, mask: torch.Tensor | None = None) -> None:
    """Start fake-quantized training of `module.weight`."""
    parametrize.register_parametrization(module, "weight", WeightFakeQuant(quantizer, mask))


def is_wrapped(module: nn.Module) -> bool:
    return parametrize.is_parametrized(module, "weight")


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


def bake_weight(module: nn.Module) -> tuple[int, bool]:
    """End fake-quant training: the module keeps code * scale; returns (bits, per_channel)."""
    fq: WeightFakeQuant = module.parametrizations.weight[0]
    latent = module.parametrizations.weight.original.detach()
    scale, codes = fq.quantizer.deployed(latent)
    if fq.mask is not None:
        codes = codes * fq.mask.to(codes.dtype)
    parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
    set_int_weight(module, scale, codes)
    return fq.quantizer.bits, fq.quantizer.per_channel


def int_codes(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Integer codes of a baked weight (exact: weight == codes * scale)."""
    return torch.round(weight.detach().float() / scale.float()).to(torch.int64)


def check_int_weight(weight: torch.Tensor, scale: torch.Tensor, bits: int) -> None:
    """Raise ValueError unless weight == code * scale exactly with codes in the signed b-bit range."""
    codes = int_codes(weight, scale)
    q_n, q_p = qrange(bits, signed=True)
    if int(codes.min()) < -q_n or int(codes.max()) > q_p:
        raise ValueError(f"codes outside the {bits}-bit range [{-q_n}, {q_p}]")
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


def freeze_weight(module: nn.Module) -> None:
    """Keep a layer's weight as it is (ternary layers: only their activations are quantized)."""
    module.weight.requires_grad_(False)
