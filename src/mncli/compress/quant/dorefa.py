"""DoReFa-Net (Zhou et al. 2016) quantizers, kept as the baseline method.

Weights: t = tanh(w) / max|tanh(w)| in [-1, 1], codes = round(t * Q_P) in [-Q_P, Q_P] (b-bit signed, with
an exact zero so pruned weights stay pruned; Q_P from qrange, fractional bits included), straight-through
rounding. DoReFa's values lie in [-1, 1];
here they are rescaled by the layer's max|w| (no gradient) so fine-tuning a trained network keeps each
layer's magnitude: value = code * max|w| / Q_P, i.e. an ordinary code * scale layer.
Activations: clip(x, 0, 1) quantized to 2^b - 1 steps (inputs that can be negative: the signed grid
with the same step, [-Q_N, Q_P] / Q_P).
"""

from __future__ import annotations

import torch

from mncli.models.quantized import fake_quantize, qrange, quantize_to_codes


def _max_abs(v: torch.Tensor, per_channel: bool) -> torch.Tensor:
    a = v.detach().abs().float()
    if per_channel:
        return a.amax(dim=tuple(range(1, a.dim())), keepdim=True).clamp(min=1e-8)
    return a.amax().reshape(1).clamp(min=1e-8)


class DorefaWeight(torch.nn.Module):
    method = "dorefa"

    def __init__(self, weight: torch.Tensor, bits: int, per_channel: bool = False):
        super().__init__()
        self.bits, self.per_channel = bits, per_channel
        self.q_n, self.q_p = qrange(bits, signed=True)

    def _normalised(self, w: torch.Tensor) -> torch.Tensor:
        t = torch.tanh(w)
        return t / _max_abs(t, self.per_channel).to(w.dtype)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        t = self._normalised(w) * self.q_p
        q = t + (torch.round(t) - t).detach()
        return q * (_max_abs(w, self.per_channel).to(w.dtype) / self.q_p)

    def deployed(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = w.detach().float()
        codes = quantize_to_codes(self._normalised(w) * self.q_p, torch.ones(1), self.q_p, self.q_p)
        return _max_abs(w, self.per_channel) / self.q_p, codes


class DorefaAct(torch.nn.Module):
    method = "dorefa"

    def __init__(self, bits: int, signed: bool):
        super().__init__()
        self.bits, self.signed = bits, signed
        self.q_n, self.q_p = qrange(bits, signed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return fake_quantize(x, self.deployed_scale().to(x.device), self.q_n, self.q_p)
        y = torch.clamp(x * self.q_p, -float(self.q_n), float(self.q_p))
        return (y + (torch.round(y) - y).detach()) / self.q_p

    def deployed_scale(self) -> torch.Tensor:
        return torch.tensor([1.0 / self.q_p])
