"""Reweighted L1 regularisation (the MobileNetV2 CIFAR-100 seed), phase 1 of `prune --method reweighted-l1`.

    loss = CE + lambda * sum_l sum |R_l * W_l|,   R_l = 1 / (|W_l| + eps)

R is a constant (no gradient) recomputed from the current weights at milestones, so small weights
are pushed harder towards zero each round. The seed computed 1 / (W + eps) without the absolute
value, which rewards negative weights for growing; this uses |W|.
Phase 2 (hard pruning to per-layer targets and masked retraining) reuses `masks.Masker`.

The defaults are the seed's (LinLabNEU "Reweighted pruning", training/main.py and run.sh): lambda
1e-6 and eps 1e-3 (its "irregular" penalty), reweighting at epochs 60/120/180/240 of 300. Its training
around them (Adam 1e-3, no weight decay, batch 64, LR x0.98 each epoch and x1.6 at each reweighting,
300 + 300 epochs) is the prune stage's default for this method. Two of its choices are not ours: its
hard prune zeroed every |w| < 1e-4 of the listed layers (the stem and the classifier kept), where this
prunes to per-layer targets; and its masked retraining halved the LR at epochs 30/65/100/130/160/190/
220/250/280, where ours repeats the exponential schedule (x0.98^300 ~ 0.0023 of the LR by the end,
theirs 0.5^9 ~ 0.0020).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

DEFAULT_LAMBDA = 1e-6
DEFAULT_EPS = 1e-3
# Seed: reweighting at epochs 60/120/180/240 of 300 -> fractions of the regularised phase.
MILESTONE_FRACTIONS = (0.2, 0.4, 0.6, 0.8)


def default_milestones(epochs: int) -> list[int]:
    """Reweighting epochs at the seed's fractions of the phase (distinct, inside the phase)."""
    marks = sorted({int(round(f * epochs)) for f in MILESTONE_FRACTIONS})
    return [m for m in marks if 0 < m < epochs]


class ReweightedL1:
    """The penalty lambda * sum |R * W| over a set of layers' weights."""

    def __init__(
        self,
        model: nn.Module,
        layers: list[str],
        *,
        lam: float = DEFAULT_LAMBDA,
        eps: float = DEFAULT_EPS,
    ):
        if lam < 0 or eps <= 0:
            raise ValueError("lambda must be >= 0 and eps > 0")
        modules = dict(model.named_modules())
        self.modules = {name: modules[name] for name in layers}
        self.lam = lam
        self.eps = eps
        self.reweights: dict[str, Tensor] = {}
        self.rounds = 0
        self.reweight()

    @torch.no_grad()
    def reweight(self) -> None:
        """R = 1 / (|W| + eps) from the current weights."""
        self.reweights = {
            name: 1.0 / (m.weight.detach().abs() + self.eps) for name, m in self.modules.items()
        }
        self.rounds += 1

    def penalty(self) -> Tensor:
        total = None
        for name, m in self.modules.items():
            r = self.reweights[name]
            if r.device != m.weight.device:
                r = self.reweights[name] = r.to(m.weight.device)
            term = (r * m.weight).abs().sum()
            total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return self.lam * total
