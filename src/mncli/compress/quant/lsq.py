"""Learned step size quantization (Esser et al. 2020): the quantizer function and its initialisation.

    v_bar = round(clip(v / s, -Q_N, Q_P)),  v_hat = v_bar * s
    dv_hat/dv = 1 inside the range, 0 outside (straight-through rounding)
    dv_hat/ds = -v/s + round(v/s) inside, -Q_N below, Q_P above, times the gradient scale g
    g = 1 / sqrt(N * Q_P),  init s = 2 * mean|v| / sqrt(Q_P)

Q_N, Q_P come from the grid's levels (models.quantized.qrange): 2**b, or floor(2**b) for fractional
weight bits (2.5 bits: codes -2..2).

Autograd derives dv_hat/ds from the two helpers below; tests check it against the formula.
"""

from __future__ import annotations

import math

import torch

from mncli.models.quantized import fake_quantize, qrange, quantize_to_codes


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Forward: x. Backward: the gradient times `scale`."""
    scaled = x * scale
    return (x - scaled).detach() + scaled


def round_pass(x: torch.Tensor) -> torch.Tensor:
    """Forward: round(x). Backward: identity (straight-through)."""
    return (x.round() - x).detach() + x


def lsq_quantize(v: torch.Tensor, s: torch.Tensor, q_n: int, q_p: int, g: float) -> torch.Tensor:
    """Fake-quantized v with LSQ gradients to v and to the step size s (s broadcasts against v)."""
    s = grad_scale(s, g)
    return round_pass(torch.clamp(v / s, -q_n, q_p)) * s


def lsq_grad_scale(n_features: int, q_p: int) -> float:
    """g = 1 / sqrt(N * Q_P)."""
    return 1.0 / math.sqrt(max(n_features, 1) * q_p)


def lsq_init_scale(v: torch.Tensor, q_p: int, dim: int | None = None) -> torch.Tensor:
    """s = 2 * mean|v| / sqrt(Q_P); per channel along `dim` (kept as a broadcastable shape) when given."""
    a = v.detach().abs().float()
    if dim is None:
        mean = a.mean().reshape(1)
    else:
        other = [d for d in range(a.dim()) if d != dim]
        mean = a.mean(dim=other, keepdim=True)
    return torch.clamp(2.0 * mean / math.sqrt(q_p), min=1e-8)


class LsqWeight(torch.nn.Module):
    """LSQ weight quantizer (signed): a learned step size per tensor, or per output channel."""

    method = "lsq"

    def __init__(self, weight: torch.Tensor, bits: int, per_channel: bool = False):
        super().__init__()
        self.bits, self.per_channel = bits, per_channel
        self.q_n, self.q_p = qrange(bits, signed=True)
        self.scale = torch.nn.Parameter(lsq_init_scale(weight, self.q_p, dim=0 if per_channel else None))
        per_scale = weight[0].numel() if per_channel else weight.numel()
        self.g = lsq_grad_scale(per_scale, self.q_p)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return lsq_quantize(w, self.scale, self.q_n, self.q_p, self.g)

    def deployed(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, int codes) of the final weight."""
        s = self.scale.detach().float().clamp(min=1e-8)
        return s, quantize_to_codes(w.detach().float(), s, self.q_n, self.q_p)


class LsqAct(torch.nn.Module):
    """LSQ input-activation quantizer; the step size is set from the first batch it sees."""

    method = "lsq"

    def __init__(self, bits: int, signed: bool):
        super().__init__()
        self.bits, self.signed = bits, signed
        self.q_n, self.q_p = qrange(bits, signed)
        self.scale = torch.nn.Parameter(torch.ones(1))
        self.initialized = False

    def init_from(self, x: torch.Tensor) -> None:
        with torch.no_grad():
            self.scale.copy_(lsq_init_scale(x, self.q_p))
        self.initialized = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.initialized:
            self.init_from(x)
        if not self.training:
            return fake_quantize(x, self.scale.detach().clamp(min=1e-8), self.q_n, self.q_p)
        g = lsq_grad_scale(x[0].numel() if x.dim() > 1 else x.numel(), self.q_p)
        return lsq_quantize(x, self.scale, self.q_n, self.q_p, g)

    def deployed_scale(self) -> torch.Tensor:
        return self.scale.detach().float().clamp(min=1e-8).reshape(1)
