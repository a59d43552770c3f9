"""Optimiser groups (weight decay only where it belongs) and the per-step learning-rate schedule."""

from __future__ import annotations

import math

import torch

from mncli.engine.callbacks import Callback
from mncli.engine.config import TrainConfig
from mncli.errors import BadInput

# Learned quantizer scales and ternary scales must not be pulled to zero by weight decay.
NO_DECAY_SUFFIXES = (".scale", ".wp", ".wn", "alpha", ".bias")


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """BatchNorm weights, biases (anything of one dimension or less) and scale-like parameters."""
    return param.ndim <= 1 or name.endswith(NO_DECAY_SUFFIXES)


def param_groups(model: torch.nn.Module, cfg: TrainConfig, callbacks: list[Callback]) -> list[dict]:
    """[decay group, no-decay group, callback groups...], each with `base_lr` for the schedule."""
    claimed: set[int] = set()
    extra: list[dict] = []
    for callback in callbacks:
        for group in callback.param_groups(model):
            params = [p for p in group["params"] if p.requires_grad and id(p) not in claimed]
            claimed.update(id(p) for p in params)
            if params:
                extra.append({**group, "params": params, "weight_decay": group.get("weight_decay", 0.0)})
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in claimed:
            continue
        (no_decay if is_no_decay(name, param) else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ] + extra
    groups = [g for g in groups if g["params"]]
    for group in groups:
        group.setdefault("lr", cfg.lr)
        group["base_lr"] = group["lr"]
    return groups


def build_optimizer(groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    if not groups:
        raise BadInput("the model has no trainable parameters", hint="check the input artifact")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The schedule's multiplier of the peak lr at global `step` (0-based), warm-up included.

    Warm-up rises linearly to the peak over `warmup_epochs`; then cosine decays to final_lr_ratio,
    one-cycle is a cosine rise (30% of training, or the warm-up) and a cosine fall to peak/1e4 (as
    torch's OneCycleLR with div_factor 25 and final_div_factor 1e4), step multiplies by gamma at each
    milestone epoch, and constant stays."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule == "onecycle":
        rise = warmup or max(1, int(0.3 * total))
        start, end = 1 / 25, 1 / 25 / 1e4
        if step < rise:
            return start + (1 - start) * (1 - math.cos(math.pi * step / rise)) / 2
        progress = min(1.0, (step - rise) / max(1, total - rise))
        return end + (1 - end) * (1 + math.cos(math.pi * progress)) / 2
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        low = cfg.final_lr_ratio
        return low + (1 - low) * (1 + math.cos(math.pi * progress)) / 2
    if cfg.schedule == "step":
        epoch = step / steps_per_epoch
        return cfg.gamma ** sum(1 for m in cfg.milestones if epoch >= m)
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
