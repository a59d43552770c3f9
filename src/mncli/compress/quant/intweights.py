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

from mncli.models.quantized import set_int_weight


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


def freeze_weight(module: nn.Module) -> None:
    """Keep a layer's weight as it is (ternary layers: only their activations are quantized)."""
    module.weight.requires_grad_(False)
