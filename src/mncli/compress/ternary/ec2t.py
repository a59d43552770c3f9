"""Entropy-constrained trained ternarization (EC2T, Marban et al. 2020).

Per layer: a full-precision latent copy w, centroids (-wn, 0, +wp) with wn, wp > 0 and an
assignment a in {-1, 0, +1}. The forward uses q = wp*[a=+1] - wn*[a=-1]; gradients are TTQ's (scaled
straight-through to w, sums of g to the centroids with the correct sign on wn). After every step
the centroids are clamped to >= 0.675 * std(w) and the assignment is recomputed with the entropy
constraint (`entropy_constrained_codes`). Phase 2 freezes the assignment and trains only the
centroids and the other parameters.

EC2T's `--do-prune` step (`EC2TPruneWeight`) runs the same centroids, constraint and gradients on
layers that stay full precision: a weight is either assigned to the zero cluster or keeps its
full-precision value, so the layer ends pruned (`bake_pruned`, `pruned_specs`).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from mncli.compress.recipe import layer_roles, select_layers
from mncli.compress.ternary.common import TernaryParametrization, codes_sparsity, scaled_straight_through
from mncli.engine.callbacks import Callback, Context
from mncli.errors import BadInput

STD_CLAMP = 0.675
ZERO_FLOOR = 0.5  # P_0 is raised to at least this, so the zero centroid is always the cheapest
DECAY_SUSTAIN = 0.05
ARGMIN_CHUNK = 1 << 18

# Seed: Adam 1e-4 on w, 1e-5 on the centroids, 1e-4 with weight decay 5e-6 on everything else;
# ini_c 0.45, lambda_div 0.15, 20 + 20 epochs, batch 128.
EC2T_DEFAULTS = {
    "ini_c": 0.45,
    "lambda_div": 0.15,
    "epochs": 20,
    "retrain_epochs": 20,
    "optimizer": "adam",
    "lr": 1e-4,
    "latent_lr": 1e-4,
    "centroid_lr": 1e-5,
    "weight_decay": 5e-6,
    "schedule": "constant",
    "batch_size": 128,
}
# Seed, step 2 (`run_quantization.py ... --ini-c-divrs 0.25 --lambda-max-divrs 0.15 --epochs 10
# --retrain-epochs 0 --do-prune`): the same optimisers, larger ini_c as the non-zeros stay float.
EC2T_PRUNE_DEFAULTS = {**EC2T_DEFAULTS, "ini_c": 0.25, "lambda_div": 0.15, "epochs": 10, "retrain_epochs": 0}
# The seed prunes `_se_reduce`, `_se_expand` and `_fc` (main_trained_quantization.py, args.prune).
PRUNE_ROLES = ("se", "classifier")
GRID_INI_C = (0.15, 0.3, 0.45, 0.5)
GRID_LAMBDA_DIV = (0.125, 0.15, 0.175)


def layer_decay(numel: int, largest: int) -> float:
    """Smaller layers get a weaker constraint: (N_l / N_largest + 0.05) / 1.05."""
    return (numel / largest + DECAY_SUSTAIN) / (1.0 + DECAY_SUSTAIN)


def nearest_probabilities(values: torch.Tensor, wp: float, wn: float) -> torch.Tensor:
    """P(neg), P(zero), P(pos) of the nearest-centroid assignment, with P_0 raised to >= 0.5 by taking
    mass from P_-/P_+ in proportion; an empty cluster counts as one weight so I_c stays finite."""
    n = max(values.numel(), 1)
    neg = int((values < -wn / 2).sum())
    pos = int((values > wp / 2).sum())
    counts = torch.tensor([neg, n - neg - pos, pos], dtype=torch.float64).clamp(min=1.0)
    p = counts / counts.sum()
    if p[1] < ZERO_FLOOR:
        deficit = ZERO_FLOOR - float(p[1])
        side = float(p[0] + p[2])
        p[0], p[2] = p[0] - p[0] / side * deficit, p[2] - p[2] / side * deficit
        p[1] = ZERO_FLOOR
    return p


def constraint_strength(
    values: torch.Tensor, wp: float, wn: float, lambda_div: float, decay: float
) -> tuple[float, torch.Tensor]:
    """Lambda and the information contents I = -log2 P (order neg, zero, pos).

    Lmax_n is the Lambda at which the most negative weight would move from -wn to 0 (Lmax_p likewise);
    Lambda = lambda_div * decay * min(Lmax_n, Lmax_p). A side with I == I_0 gives no bound."""
    info = -torch.log2(nearest_probabilities(values, wp, wn))
    if values.numel() == 0:
        return 0.0, info
    w_min, w_max = abs(float(values.min())), abs(float(values.max()))
    bounds = []
    for extreme, centroid, i_side in ((w_min, wn, info[0]), (w_max, wp, info[2])):
        gap = float(i_side - info[1])
        if gap > 1e-12:
            bounds.append((extreme**2 - (centroid - extreme) ** 2) / gap)
    if not bounds:
        return 0.0, info
    strength = lambda_div * decay * min(bounds)
    return (max(strength, 0.0) if math.isfinite(strength) else 0.0), info


def entropy_constrained_codes(
    latent: torch.Tensor,
    wp: float,
    wn: float,
    lambda_div: float,
    decay: float,
    mask: torch.Tensor | None = None,
    chunk: int = ARGMIN_CHUNK,
) -> tuple[torch.Tensor, float]:
    """a_i = argmin_c (w_i - c)^2 + Lambda * I_c over c in (-wn, 0, wp); returns int8 codes, Lambda.

    Pruned weights (mask False) stay 0 and are left out of the statistics. The argmin runs in chunks
    so a large layer never materialises a 3 x N cost tensor."""
    flat = latent.detach().reshape(-1)
    active = None if mask is None else mask.reshape(-1)
    values = flat if active is None else flat[active]
    strength, info = constraint_strength(values, wp, wn, lambda_div, decay)
    centroids = torch.tensor([-wn, 0.0, wp], dtype=flat.dtype, device=flat.device)
    penalty = (strength * info).to(flat.dtype).to(flat.device)
    codes = torch.empty(flat.numel(), dtype=torch.int8, device=flat.device)
    for start in range(0, flat.numel(), chunk):
        part = flat[start : start + chunk]
        cost = (part[:, None] - centroids[None, :]) ** 2 + penalty[None, :]
        codes[start : start + chunk] = (cost.argmin(dim=1) - 1).to(torch.int8)
    if active is not None:
        codes = codes * active.to(torch.int8)
    return codes.reshape(latent.shape), strength


class EC2TWeight(TernaryParametrization):
    """EC2T layer: centroids wp, wn (positive) and a stored assignment, re-assigned by `reassign_`."""

    method = "ec2t"

    def __init__(
        self,
        latent: torch.Tensor,
        ini_c: float = 0.45,
        lambda_div: float = 0.15,
        decay: float = 1.0,
        mask: torch.Tensor | None = None,
    ):
        super().__init__(mask)
        self.ini_c, self.lambda_div, self.decay = float(ini_c), float(lambda_div), float(decay)
        values = latent[self.active(latent)] if latent.numel() else latent
        w_max = float(values.max()) if values.numel() else 1.0
        w_min = float(values.min()) if values.numel() else -1.0
        self.wp = nn.Parameter(torch.tensor(max(self.ini_c * w_max, 1e-6), dtype=latent.dtype))
        self.wn = nn.Parameter(torch.tensor(max(self.ini_c * abs(w_min), 1e-6), dtype=latent.dtype))
        self.frozen = False
        self.last_lambda = 0.0
        nearest, _ = entropy_constrained_codes(
            latent, float(self.wp.detach()), float(self.wn.detach()), 0.0, 1.0, self.mask
        )
        self.register_buffer("assignment", nearest)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        pos, neg = self.assignment > 0, self.assignment < 0
        return scaled_straight_through(latent, pos, neg, self.wp, self.wn, self.mask)

    def codes(self, latent: torch.Tensor) -> torch.Tensor:
        return self.assignment.clone()

    def scales(self, latent: torch.Tensor) -> tuple[float, float]:
        return float(self.wp.detach()), float(self.wn.detach())

    def clamp_(self, latent: torch.Tensor) -> None:
        """Keep both centroids >= 0.675 * std(w) so the layer stays ternary."""
        with torch.no_grad():
            values = latent[self.active(latent)]
            floor = STD_CLAMP * float(values.std()) if values.numel() > 1 else 0.0
            floor = max(floor, 1e-6)
            self.wp.clamp_(min=floor)
            self.wn.clamp_(min=floor)

    def reassign_(self, latent: torch.Tensor) -> None:
        if self.frozen:
            return
        codes, self.last_lambda = entropy_constrained_codes(
            latent, float(self.wp.detach()), float(self.wn.detach()), self.lambda_div, self.decay, self.mask
        )
        self.assignment.copy_(codes)

    def hyper_params(self) -> dict:
        return {"ini_c": self.ini_c, "lambda_div": self.lambda_div, "decay": self.decay}


class EC2TPruneWeight(EC2TWeight):
    """EC2T's entropy-controlled pruning: EC2TWeight's centroids, entropy-constrained assignment and
    gradients, but the forward keeps the latent weight wherever the assignment is non-zero.

    Follows d-becking/neurips-2019-micronet-challenge, model_quantization/quantizer.py with
    `pruning=True`: `quantize` returns (a + b) * weights (the fp weights where assigned to -wn or +wp,
    zero elsewhere) while `get_grads` and the centroid update stay the ternary ones (wp*g, g, wn*g to
    the fp copy; sums of g to the centroids, here with the correct sign on wn)."""

    method = "ec2t-prune"

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        pos, neg = self.assignment > 0, self.assignment < 0
        ternary = scaled_straight_through(latent, pos, neg, self.wp, self.wn, self.mask)
        kept = torch.where(pos | neg, latent, torch.zeros_like(latent)).detach()
        return kept + (ternary - ternary.detach())  # the kept values, with the ternary layer's gradients


def select_prune_layers(
    model: nn.Module, patterns: list[str] | None = None, *, include_depthwise: bool = False
) -> list[str]:
    """Layers for `--do-prune`: the squeeze-excite convs and the classifier by default (the
    classifier alone on a model without squeeze-excite), or what the patterns name."""
    wanted = {*PRUNE_ROLES, *(("depthwise",) if include_depthwise else ())}
    others = set(layer_roles(model).values()) - wanted
    names = select_layers(model, patterns, exclude_roles=others, include_depthwise=include_depthwise)
    if not names:
        raise BadInput(
            "no layer left to prune", hint="name layers with --layers 'PATTERN'; see `mncli inspect`"
        )
    return names


def bake_pruned(model: nn.Module, params: dict[str, EC2TPruneWeight]) -> dict[str, dict]:
    """Remove the parametrizations; each weight then holds its latent value where the assignment is
    non-zero and an exact 0.0 elsewhere. Returns per-layer {numel, nnz, sparsity, ini_c, lambda_div,
    decay}."""
    modules = dict(model.named_modules())
    stats: dict[str, dict] = {}
    for name, p in params.items():
        module = modules[name]
        latent = module.parametrizations.weight.original.detach()
        with torch.no_grad():
            keep = p.codes(latent) != 0
            if p.mask is not None:
                keep &= p.mask
            weight = torch.where(keep, latent, torch.zeros_like(latent))
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        with torch.no_grad():
            module.weight.copy_(weight)
        numel, nnz = keep.numel(), int(keep.sum())
        stats[name] = {"numel": numel, "nnz": nnz, "sparsity": 1.0 - nnz / numel, **p.hyper_params()}
    return stats


def pruned_specs(specs: dict[str, dict], stats: dict[str, dict]) -> dict[str, dict]:
    """Specs after `--do-prune`, recorded as the prune stage records a pruned layer: "mask": true,
    the method, the achieved sparsity; the weight stays float. Other keys a layer had are kept."""
    out = {name: dict(spec) for name, spec in specs.items()}
    for name, s in stats.items():
        spec = out.setdefault(name, {})
        spec["mask"] = True
        spec.setdefault("method", "ec2t")
        spec["prune_method"] = "ec2t"
        spec["sparsity"] = s["sparsity"]
        spec.update({k: s[k] for k in ("ini_c", "lambda_div", "decay")})
    return out


def make_layers_decay(model: nn.Module, names: list[str]) -> dict[str, float]:
    """decay_l of each layer relative to the largest ternarized layer."""
    modules = dict(model.named_modules())
    sizes = {n: modules[n].weight.numel() for n in names}
    largest = max(sizes.values())
    return {n: layer_decay(size, largest) for n, size in sizes.items()}


class EC2TCallback(Callback):
    """EC2T's optimisers as groups of one Adam (Adam keeps per-parameter state, so this equals three
    Adams): latent weights (latent_lr, no decay), centroids (centroid_lr, no decay); the rest stays in
    the default groups (cfg.lr, cfg.weight_decay). After each step: clamp the centroids to
    >= 0.675 * std(w), re-assign with the entropy constraint (phase 1 only), re-zero pruned weights."""

    def __init__(
        self,
        model: nn.Module,
        layers: dict[str, EC2TWeight],
        latent_lr: float,
        centroid_lr: float,
        retrain: bool = False,
        sparsity_metric: str = "ternary_sparsity",
    ):
        self.layers = layers
        self.latent_lr, self.centroid_lr = float(latent_lr), float(centroid_lr)
        self.retrain = retrain
        self.sparsity_metric = sparsity_metric
        self._modules = {name: dict(model.named_modules())[name] for name in layers}
        for name, p in layers.items():
            p.frozen = retrain
            self._latent(name).requires_grad_(not retrain)

    def _latent(self, name: str) -> torch.Tensor:
        return self._modules[name].parametrizations.weight.original

    def param_groups(self, model: nn.Module) -> list[dict]:
        centroids = [t for p in self.layers.values() for t in (p.wp, p.wn)]
        groups = [
            {"params": centroids, "lr": self.centroid_lr, "weight_decay": 0.0, "name": "ec2t_centroids"}
        ]
        if not self.retrain:
            latents = [self._latent(n) for n in self.layers]
            groups.insert(
                0, {"params": latents, "lr": self.latent_lr, "weight_decay": 0.0, "name": "ec2t_latent"}
            )
        return groups

    def after_step(self, ctx: Context) -> None:
        with torch.no_grad():
            for name, p in self.layers.items():
                latent = self._latent(name)
                p.mask_latent_(latent)
                p.clamp_(latent)
                p.reassign_(latent)

    def on_epoch_end(self, ctx: Context, metrics: dict) -> None:
        metrics[self.sparsity_metric] = codes_sparsity(ctx.model, self.layers)
