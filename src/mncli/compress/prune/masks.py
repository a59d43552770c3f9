"""Magnitude masks that hit their target exactly, and a `Masker` that keeps them applied.

A mask here is a bool tensor shaped like the weight: True keeps the weight, False zeroes it. For a
target sparsity `s` exactly `k = round(s * numel)` weights are zeroed: the smallest |w|, ties broken
by position (a stable sort), so the achieved sparsity equals the target to the weight. Zeros that
must stay (a mask from an earlier stage, or the current mask of a gradual schedule) are taken first;
a target below them keeps them all.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn


def target_count(sparsity: float, numel: int) -> int:
    """Number of zeros a tensor of `numel` weights needs for `sparsity` (round half up)."""
    return min(numel, int(math.floor(sparsity * numel + 0.5)))


def _order(weight: Tensor, forced_zero: Tensor | None) -> Tensor:
    """Flat indices from first-to-prune to last: forced zeros, then ascending |w|, ties by index."""
    key = weight.detach().abs().flatten().to(torch.float64)
    key = torch.nan_to_num(key, nan=math.inf)
    if forced_zero is not None:
        key = torch.where(forced_zero.flatten(), torch.full_like(key, -1.0), key)
    return torch.argsort(key, stable=True)


def magnitude_mask(weight: Tensor, sparsity: float, forced_zero: Tensor | None = None) -> Tensor:
    """Keep-mask zeroing the k smallest |w| (k = round(sparsity*numel)), plus every forced zero."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity {sparsity} outside [0, 1]")
    n = weight.numel()
    k = target_count(sparsity, n)
    if forced_zero is not None:
        k = max(k, int(forced_zero.sum()))
    keep = torch.ones(n, dtype=torch.bool, device=weight.device)
    keep[_order(weight, forced_zero)[:k]] = False
    return keep.view_as(weight)


def global_magnitude_masks(
    weights: dict[str, Tensor], sparsity: float, forced_zero: dict[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """One threshold over all tensors: exactly round(sparsity * total) zeros overall.

    Ties are broken by tensor order (as given), then by position, so the result is deterministic.
    """
    forced_zero = forced_zero or {}
    names = list(weights)
    keys, sizes = [], []
    for name in names:
        w = weights[name].detach()
        key = torch.nan_to_num(w.abs().flatten().to(torch.float64).cpu(), nan=math.inf)
        if name in forced_zero:
            key = torch.where(forced_zero[name].flatten().cpu(), torch.full_like(key, -1.0), key)
        keys.append(key)
        sizes.append(w.numel())
    flat = torch.cat(keys)
    k = target_count(sparsity, flat.numel())
    k = max(k, int((flat < 0).sum()))
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[torch.argsort(flat, stable=True)[:k]] = False
    masks = {}
    for name, part in zip(names, torch.split(keep, sizes), strict=True):
        masks[name] = part.view_as(weights[name]).to(weights[name].device)
    return masks


def kept_masks(
    model: nn.Module, specs: dict[str, dict], names: Iterable[str] | None = None
) -> dict[str, Tensor]:
    """Keep-masks (True where a weight may be non-zero) of the layers an earlier stage pruned: those
    whose spec says `"mask": true`, optionally only among `names`. The one place this is computed."""
    modules = dict(model.named_modules())
    wanted = set(specs) if names is None else set(names)
    return {
        name: modules[name].weight.detach() != 0
        for name, spec in specs.items()
        if name in wanted and isinstance(spec, dict) and spec.get("mask") and name in modules
    }


def sparsity_of(tensor: Tensor) -> float:
    """Fraction of exact zeros."""
    return float((tensor == 0).sum()) / max(1, tensor.numel())


class Masker:
    """Masks for a set of layers' weights: compute, apply in place, and mask gradients.

    `fixed` holds zeros that must survive (layers masked in the input artifact); every new mask
    keeps them. `apply()` is what runs before the forward pass and after every optimiser step.
    """

    def __init__(self, model: nn.Module, layers: Iterable[str], fixed: dict[str, Tensor] | None = None):
        modules = dict(model.named_modules())
        self.modules: dict[str, nn.Module] = {name: modules[name] for name in layers}
        self.fixed: dict[str, Tensor] = {k: v.bool() for k, v in (fixed or {}).items()}
        for name in self.fixed:
            if name not in self.modules:
                self.modules[name] = modules[name]
        self.masks: dict[str, Tensor] = {
            name: ~zero for name, zero in self.fixed.items()
        }  # keep-masks; a layer without one is dense
        self.targets: dict[str, float] = {}
        self._hooks: list = []

    def weight(self, name: str) -> Tensor:
        return self.modules[name].weight

    def _forced(self, name: str, keep_current: bool) -> Tensor | None:
        forced = self.fixed.get(name)
        if keep_current and name in self.masks:
            current = ~self.masks[name]
            forced = current if forced is None else forced | current
        return forced

    def prune_to(self, targets: dict[str, float], *, keep_current: bool = True) -> None:
        """Per-layer magnitude masks to `targets` (zeros already masked stay when keep_current)."""
        for name, sparsity in targets.items():
            w = self.weight(name)
            self.masks[name] = magnitude_mask(w, sparsity, self._forced(name, keep_current))
            self.targets[name] = float(sparsity)
        self.apply()

    def prune_global(self, layers: Iterable[str], sparsity: float, *, keep_current: bool = True) -> None:
        """One magnitude threshold across `layers` to an overall `sparsity`."""
        layers = list(layers)
        weights = {n: self.weight(n) for n in layers}
        forced = {n: f for n in layers if (f := self._forced(n, keep_current)) is not None}
        for name, keep in global_magnitude_masks(weights, sparsity, forced).items():
            self.masks[name] = keep
            self.targets[name] = 1.0 - float(keep.sum()) / keep.numel()
        self.apply()

    def prune_below(self, threshold: float, layers: Iterable[str], relative: bool = False) -> None:
        """Zero every weight with |w| < `threshold` in `layers` (zeros already masked stay); `relative`:
        below `threshold` times the layer's largest |w|."""
        for name in layers:
            magnitude = self.weight(name).detach().abs()
            keep = magnitude >= (threshold * float(magnitude.max()) if relative else threshold)
            forced = self._forced(name, keep_current=True)
            self.masks[name] = keep if forced is None else keep & ~forced
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        for name, keep in self.masks.items():
            w = self.weight(name)
            if keep.device != w.device:
                keep = self.masks[name] = keep.to(w.device)
            w.mul_(keep)

    def mask_gradients(self) -> None:
        """Zero the gradient of masked weights as it is computed (keeps optimiser state clean)."""
        self.remove_gradient_masks()
        for name in self.masks:
            w = self.weight(name)
            self._hooks.append(w.register_hook(lambda grad, name=name: self._masked_grad(name, grad)))

    def _masked_grad(self, name: str, grad: Tensor) -> Tensor:
        keep = self.masks.get(name)
        return grad if keep is None else grad * keep.to(grad.device)

    def remove_gradient_masks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def achieved(self) -> dict[str, float]:
        return {name: sparsity_of(self.weight(name).detach()) for name in self.masks}

    def report(self) -> dict[str, dict]:
        """Per masked layer: target, achieved sparsity, zeros and size."""
        out = {}
        for name in self.masks:
            w = self.weight(name).detach()
            zeros = int((w == 0).sum())
            out[name] = {
                "target": self.targets.get(name),
                "achieved": zeros / w.numel(),
                "zeros": zeros,
                "numel": w.numel(),
            }
        return out

    def overall(self) -> tuple[float, float]:
        """(target, achieved) sparsity over all masked weights, weighted by size."""
        total = sum(self.weight(n).numel() for n in self.masks) or 1
        zeros = sum(int((self.weight(n).detach() == 0).sum()) for n in self.masks)
        target = 0.0
        for name in self.masks:
            numel = self.weight(name).numel()
            t = self.targets.get(name)
            target += (t if t is not None else sparsity_of(self.masks[name])) * numel
        return target / total, zeros / total

    def max_deviation(self) -> int:
        """Largest |zeros - round(target * numel)| over layers with a target, in weights."""
        worst = 0
        for name, t in self.targets.items():
            w = self.weight(name).detach()
            expected = target_count(t, w.numel())
            if name in self.fixed:
                expected = max(expected, int(self.fixed[name].sum()))
            worst = max(worst, abs(int((w == 0).sum()) - expected))
        return worst
