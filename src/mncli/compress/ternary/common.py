"""What TTQ and EC2T share: which layers, latent weights, the straight-through estimators, bake.

During training a ternarized layer's `weight` is a torch parametrization: the full-precision latent
weight lives in `module.parametrizations.weight.original` and every forward reads the ternary
tensor computed from it. A parametrization describes its layer by two things:

    codes(latent) -> int8 tensor in {-1, 0, +1}     scales(latent) -> (wp, wn), both > 0

and `bake` replaces the parametrization by a plain weight holding exactly wp * [code = +1]
- wn * [code = -1], the in-memory contract of docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

from mncli.compress.recipe import select_layers
from mncli.errors import BadInput

# The seeds keep the stem, the classifier and the 1x1 residual projections in full precision; the
# MIT seed keeps depthwise convs full precision too (tiny and fragile), and EC2T's EfficientNet keeps
# squeeze-excite convs out of the ternary set.
DEFAULT_EXCLUDE_ROLES = ("stem", "classifier", "shortcut", "se")
SMALLEST_SCALE = 1e-6


def select_ternary_layers(
    model: nn.Module, patterns: Iterable[str] | None = None, *, include_depthwise: bool = False
) -> list[str]:
    """Layers to ternarize: block convs by default, or what the patterns name ("!pat" removes)."""
    names = select_layers(
        model, patterns, exclude_roles=DEFAULT_EXCLUDE_ROLES, include_depthwise=include_depthwise
    )
    if not names:
        raise BadInput(
            "no layer left to ternarize",
            hint="name layers with --layers 'PATTERN' (e.g. --layers '*conv*'); see `mncli inspect`",
        )
    return names


class TernaryParametrization(nn.Module):
    """Base of the ternary parametrizations; `mask` (bool, optional) pins pruned weights to zero."""

    method = "ternary"

    def __init__(self, mask: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("mask", None if mask is None else mask.detach().clone().bool())

    def codes(self, latent: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def scales(self, latent: torch.Tensor) -> tuple[float, float]:
        raise NotImplementedError

    def hyper_params(self) -> dict:
        return {}

    def active(self, latent: torch.Tensor) -> torch.Tensor:
        """Bool tensor: weights not pinned to zero by a pruning mask."""
        return torch.ones_like(latent, dtype=torch.bool) if self.mask is None else self.mask

    def mask_latent_(self, latent: torch.Tensor) -> None:
        if self.mask is not None:
            latent.mul_(self.mask)


def scaled_straight_through(
    latent: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    wp: torch.Tensor,
    wn: torch.Tensor,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """q = wp*pos - wn*neg; autograd gives dL/dwp = sum_pos g, dL/dwn = -sum_neg g (the correct sign)
    and the latent gets TTQ's scaled straight-through gradient: wp*g on pos, g on zeros, wn*g on neg."""
    posf, negf = pos.to(latent.dtype), neg.to(latent.dtype)
    q = wp * posf - wn * negf
    factor = wp.detach() * posf + wn.detach() * negf + (1.0 - posf - negf)
    return q + gradient_only(latent, factor, mask)


def gradient_only(
    latent: torch.Tensor, factor: torch.Tensor | float, mask: torch.Tensor | None
) -> torch.Tensor:
    """Exactly zero in value; its gradient w.r.t. latent is factor * g (and 0 on pruned weights)."""
    if mask is not None:
        factor = factor * mask.to(latent.dtype)
    scaled = latent * factor
    return scaled - scaled.detach()


def attach(
    model: nn.Module, names: Iterable[str], make: Callable[[str, torch.Tensor], TernaryParametrization]
) -> dict[str, TernaryParametrization]:
    """Register a ternary parametrization on each named layer's weight; returns them by name."""
    modules = dict(model.named_modules())
    attached: dict[str, TernaryParametrization] = {}
    for name in names:
        module = modules[name]
        if parametrize.is_parametrized(module, "weight"):
            raise BadInput(f"layer {name} is already parametrized")
        with torch.no_grad():
            p = make(name, module.weight.detach())
            p.to(module.weight.device)
            p.mask_latent_(module.weight)
        parametrize.register_parametrization(module, "weight", p)
        attached[name] = p
    return attached


def latent_weight(model: nn.Module, name: str) -> nn.Parameter:
    return dict(model.named_modules())[name].parametrizations.weight.original


def scale_parameters(params: dict[str, TernaryParametrization]) -> list[nn.Parameter]:
    return [t for p in params.values() for t in p.parameters(recurse=False)]


def ternary_values(codes: torch.Tensor, wp: float, wn: float, dtype: torch.dtype) -> torch.Tensor:
    """The real weight: exactly wp, 0 or -wn (as `dtype` numbers)."""
    values = torch.tensor([-wn, 0.0, wp], dtype=dtype, device=codes.device)
    return values[codes.long() + 1]


def bake(model: nn.Module, params: dict[str, TernaryParametrization]) -> dict[str, dict]:
    """Remove the parametrizations; each weight then holds only {-wn, 0, +wp}. Returns per-layer
    stats {wp, wn, sparsity, nnz, numel, positives, negatives} with wp, wn as stored (float32) values."""
    modules = dict(model.named_modules())
    stats: dict[str, dict] = {}
    for name, p in params.items():
        module = modules[name]
        latent = module.parametrizations.weight.original.detach()
        with torch.no_grad():
            codes = p.codes(latent)
            if p.mask is not None:
                codes = codes * p.mask.to(codes.dtype)
            wp, wn = (max(float(s), SMALLEST_SCALE) for s in p.scales(latent))
            # round through the weight dtype so the spec records exactly the numbers the tensor holds
            wp32, wn32 = (float(torch.tensor(s, dtype=latent.dtype)) for s in (wp, wn))
            weight = ternary_values(codes, wp32, wn32, latent.dtype)
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        with torch.no_grad():
            module.weight.copy_(weight)
        numel = codes.numel()
        nnz = int((codes != 0).sum())
        stats[name] = {
            "wp": wp32,
            "wn": wn32,
            "numel": numel,
            "nnz": nnz,
            "sparsity": 1.0 - nnz / numel,
            "positives": int((codes > 0).sum()),
            "negatives": int((codes < 0).sum()),
            **p.hyper_params(),
        }
    return stats


def ternary_specs(
    specs: dict[str, dict], stats: dict[str, dict], method: str, extra: dict
) -> dict[str, dict]:
    """Specs after ternarization: the layers in `stats` become ternary, other keys they had are kept."""
    out = {name: dict(spec) for name, spec in specs.items()}
    for name, s in stats.items():
        spec = out.setdefault(name, {})
        spec["weight"] = {"format": "ternary", "bits": 2, "wp": s["wp"], "wn": s["wn"]}
        spec["mask"] = s["nnz"] < s["numel"]
        spec["method"] = method
        spec["sparsity"] = s["sparsity"]
        spec.update(extra)
        spec.update({k: v for k, v in s.items() if k in ("threshold", "lambda_div", "ini_c", "decay")})
    return out


def codes_sparsity(model: nn.Module, params: dict[str, TernaryParametrization]) -> float:
    """Fraction of zero codes over all ternarized layers (what bake would store)."""
    modules = dict(model.named_modules())
    zeros = total = 0
    with torch.no_grad():
        for name, p in params.items():
            codes = p.codes(modules[name].parametrizations.weight.original.detach())
            zeros += int((codes == 0).sum())
            total += codes.numel()
    return zeros / max(total, 1)
