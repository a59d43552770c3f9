"""PACT (Choi et al. 2018): a learned activation clip alpha, quantized uniformly inside [0, alpha].

    y = clip(x, 0, alpha),  y_q = round(y * (2^b - 1) / alpha) * alpha / (2^b - 1)
    dy_q/dx = 1 on [0, alpha),  dy_q/dalpha = 1 where x >= alpha   (straight-through rounding)

alpha starts at 10 (the paper's value) and is regularised with L2 (its own optimiser group). A layer
whose input can be negative gets the signed version clip(x, -alpha * Q_N / Q_P, alpha). Weights under PACT use
DoReFa's weight quantizer, as the paper did (see dorefa.py).
"""

from __future__ import annotations

import torch

from mncli.models.quantized import fake_quantize, qrange

PACT_ALPHA_INIT = 10.0


class PactAct(torch.nn.Module):
    method = "pact"

    def __init__(self, bits: int, signed: bool, alpha: float = PACT_ALPHA_INIT):
        super().__init__()
        self.bits, self.signed = bits, signed
        self.q_n, self.q_p = qrange(bits, signed)
        self.alpha = torch.nn.Parameter(torch.tensor([float(alpha)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return fake_quantize(x, self.deployed_scale().to(x.device), self.q_n, self.q_p)
        alpha = self.alpha.clamp(min=1e-4)
        step = alpha / self.q_p
        # Signed: the two's complement grid reaches one step further below zero (-Q_N codes).
        y = torch.minimum(torch.maximum(x, -self.q_n * step), alpha)
        step = step.detach()
        return y + (torch.round(y / step) * step - y).detach()

    def deployed_scale(self) -> torch.Tensor:
        return (self.alpha.detach().float().clamp(min=1e-4) / self.q_p).reshape(1)
