"""Trained ternary quantization (Zhu, Han, Mao, Dally 2017) and the MIT seed's variant.

Paper version, per layer: delta = t * max|w| (recomputed each step, no gradient through it),
q = +Wp where w > delta, -Wn where w < -delta, 0 elsewhere; Wp, Wn learned and kept >= 1e-3.
The gradient of Wn comes from autograd on q = Wp*pos - Wn*neg, so it carries the minus sign that
the paper's equation and several ports drop.

MIT variant: delta = 0.7 * mean|w|, scale = mean of |w| above delta (no gradient), q = scale*wp on
positives and scale*wn on negatives with signed wp (init +1) and wn (init -1), identity
straight-through. Stored as wp_eff = scale*wp, wn_eff = -scale*wn; the callback keeps wp >= 1e-3 and
wn <= -1e-3 after every step, so the stored layer is always a proper {-wn_eff, 0, +wp_eff} ternary
(an unclamped sign flip would give two clusters of the same sign).
"""

from __future__ import annotations

import torch
from torch import nn

from mncli.compress.ternary.common import (
    TernaryParametrization,
    codes_sparsity,
    gradient_only,
    scale_parameters,
    scaled_straight_through,
)
from mncli.engine.callbacks import Callback, Context

SCALE_FLOOR = 1e-3

# Paper: SGD 0.1, momentum 0.9, weight decay 2e-4, LR x0.1 at epochs 82/123/150 of a ~164-epoch
# CIFAR run. The CLI keeps the optimiser and puts the decays at the same fractions of --epochs.
TTQ_DEFAULTS = {
    "threshold": 0.05,
    "epochs": 20,
    "optimizer": "sgd",
    "lr": 0.1,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 2e-4,
    "schedule": "step",
    "milestone_fractions": (82 / 164, 123 / 164, 150 / 164),
    "gamma": 0.1,
    "batch_size": 128,
}
# The ProxylessNAS CIFAR-100 seed: 30 epochs, SGD 0.01 cosine, nesterov, weight decay 1e-4.
MIT_DEFAULTS = {
    "threshold": 0.7,
    "epochs": 30,
    "optimizer": "sgd",
    "lr": 0.01,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 1e-4,
    "schedule": "cosine",
    "milestone_fractions": (),
    "gamma": 0.1,
    "batch_size": 128,
}


class TTQWeight(TernaryParametrization):
    """Paper TTQ: positive learned Wp, Wn; threshold t * max|w|; scaled straight-through."""

    method = "ttq"

    def __init__(
        self,
        latent: torch.Tensor,
        threshold: float = 0.05,
        mask: torch.Tensor | None = None,
        init: str = "mean",
    ):
        super().__init__(mask)
        self.threshold = float(threshold)
        pos, neg = self._sides(latent)
        if init == "mean":  # fine-tuning from a trained model: mean |w| of each side
            wp = latent[pos].abs().mean() if pos.any() else torch.tensor(1.0)
            wn = latent[neg].abs().mean() if neg.any() else torch.tensor(1.0)
        else:
            wp, wn = torch.tensor(1.0), torch.tensor(1.0)
        self.wp = nn.Parameter(wp.detach().clamp(min=SCALE_FLOOR).to(latent.dtype).clone())
        self.wn = nn.Parameter(wn.detach().clamp(min=SCALE_FLOOR).to(latent.dtype).clone())

    def _sides(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            delta = self.threshold * latent.abs().max()
            pos, neg = latent > delta, latent < -delta
            if self.mask is not None:
                pos, neg = pos & self.mask, neg & self.mask
        return pos, neg

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        pos, neg = self._sides(latent)
        return scaled_straight_through(latent, pos, neg, self.wp, self.wn, self.mask)

    def codes(self, latent: torch.Tensor) -> torch.Tensor:
        pos, neg = self._sides(latent)
        return pos.to(torch.int8) - neg.to(torch.int8)

    def scales(self, latent: torch.Tensor) -> tuple[float, float]:
        return float(self.wp.detach()), float(self.wn.detach())

    def clamp_(self) -> None:
        with torch.no_grad():
            self.wp.clamp_(min=SCALE_FLOOR)
            self.wn.clamp_(min=SCALE_FLOOR)

    def hyper_params(self) -> dict:
        return {"threshold": self.threshold}


class MITTernaryWeight(TernaryParametrization):
    """MIT seed: threshold 0.7 * mean|w|, data-driven scale times signed learned wp, wn; identity STE."""

    method = "ttq-mit"

    def __init__(self, latent: torch.Tensor, threshold: float = 0.7, mask: torch.Tensor | None = None):
        super().__init__(mask)
        self.threshold = float(threshold)
        self.wp = nn.Parameter(torch.tensor(1.0, dtype=latent.dtype))
        self.wn = nn.Parameter(torch.tensor(-1.0, dtype=latent.dtype))

    def _sides_and_scale(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            magnitude = latent.abs()
            active = self.active(latent)
            delta = self.threshold * magnitude[active].mean() if active.any() else magnitude.new_zeros(())
            big = (magnitude > delta) & active
            scale = magnitude[big].mean() if big.any() else magnitude.new_zeros(())
            pos, neg = big & (latent > 0), big & (latent < 0)
        return pos, neg, scale

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        pos, neg, scale = self._sides_and_scale(latent)
        posf, negf = pos.to(latent.dtype), neg.to(latent.dtype)
        q = scale * self.wp * posf + scale * self.wn * negf
        return q + gradient_only(latent, 1.0, self.mask)

    def codes(self, latent: torch.Tensor) -> torch.Tensor:
        pos, neg, _ = self._sides_and_scale(latent)
        return pos.to(torch.int8) - neg.to(torch.int8)

    def scales(self, latent: torch.Tensor) -> tuple[float, float]:
        _, _, scale = self._sides_and_scale(latent)
        return float(scale * self.wp.detach()), float(-scale * self.wn.detach())

    def clamp_(self) -> None:
        with torch.no_grad():
            self.wp.clamp_(min=SCALE_FLOOR)
            self.wn.clamp_(max=-SCALE_FLOOR)

    def hyper_params(self) -> dict:
        return {"threshold": self.threshold}


class TTQCallback(Callback):
    """Wp/Wn (or the MIT variant's wp/wn) in their own group: own lr, no weight decay; after every step
    the scales are clamped and pruned latent weights are zeroed again."""

    def __init__(self, model: nn.Module, layers: dict[str, TTQWeight | MITTernaryWeight], scale_lr: float):
        self.layers = layers
        self.scale_lr = float(scale_lr)
        self._modules = {name: dict(model.named_modules())[name] for name in layers}

    def param_groups(self, model: nn.Module) -> list[dict]:
        return [
            {
                "params": scale_parameters(self.layers),
                "lr": self.scale_lr,
                "weight_decay": 0.0,
                "name": "ternary_scales",
            }
        ]

    def after_step(self, ctx: Context) -> None:
        with torch.no_grad():
            for name, p in self.layers.items():
                p.clamp_()
                p.mask_latent_(self._modules[name].parametrizations.weight.original)

    def on_epoch_end(self, ctx: Context, metrics: dict) -> None:
        metrics["ternary_sparsity"] = codes_sparsity(ctx.model, self.layers)
