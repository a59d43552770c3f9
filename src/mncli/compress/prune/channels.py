"""Structured pruning: remove whole channels from the groups `structured.channel_groups` finds.

Criteria: "l1" removes the `ratio` fraction of channels with the smallest L1 norm (summed over the
group's producers, each normalised by its mean so a small SE conv does not drown in a big one);
"zero" removes the channels whose weights are zero in every producer (left by unstructured pruning).
Residual groups only ever lose channels that are zero in every member: a shortcut carries the
channel otherwise, and removing it from one branch would change what the others add to it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mncli.compress.prune.structured import ChannelGroup, channel_groups
from mncli.errors import BadInput
from mncli.models.reshape import module_shape

CRITERIA = ("l1", "zero")


def _out_channel_l1(module: nn.Module) -> Tensor:
    return module.weight.detach().abs().flatten(1).sum(1).to(torch.float64).cpu()


def channel_scores(model: nn.Module, group: ChannelGroup) -> tuple[Tensor, Tensor]:
    """(importance, all_zero) per channel of the group."""
    modules = dict(model.named_modules())
    importance = torch.zeros(group.channels, dtype=torch.float64)
    all_zero = torch.ones(group.channels, dtype=torch.bool)
    for name in group.producers:
        l1 = _out_channel_l1(modules[name])
        all_zero &= l1 == 0
        importance += l1 / l1.mean().clamp_min(1e-12)
    return importance, all_zero


def channels_to_keep(model: nn.Module, group: ChannelGroup, ratio: float, criterion: str) -> Tensor:
    """Sorted indices of the channels the group keeps (always at least one)."""
    importance, all_zero = channel_scores(model, group)
    if criterion == "zero" or group.residual:
        drop = all_zero.clone()
    else:
        n_drop = int(math.floor(ratio * group.channels + 0.5))
        drop = torch.zeros(group.channels, dtype=torch.bool)
        drop[torch.argsort(importance, stable=True)[:n_drop]] = True
    if bool(drop.all()):  # keep the most important one
        drop[int(torch.argmax(importance))] = False
    return torch.nonzero(~drop).flatten()


def _take(tensor: Tensor, dim: int, index: Tensor) -> Tensor:
    return tensor.detach().index_select(dim, index.to(tensor.device)).clone()


def _set_param(module: nn.Module, attr: str, dim: int, index: Tensor) -> None:
    old = getattr(module, attr, None)
    if old is None:
        return
    setattr(module, attr, nn.Parameter(_take(old, dim, index), requires_grad=old.requires_grad))


def remove_channels(model: nn.Module, group: ChannelGroup, keep: Tensor) -> list[str]:
    """Shrink every member of `group` to the channels `keep`; returns the modules changed."""
    modules = dict(model.named_modules())
    n = int(keep.numel())
    for name in group.producers:
        module = modules[name]
        _set_param(module, "weight", 0, keep)
        _set_param(module, "bias", 0, keep)
        if isinstance(module, nn.Linear):
            module.out_features = n
        else:
            module.out_channels = n
    for name in group.depthwise:
        module = modules[name]
        _set_param(module, "weight", 0, keep)
        _set_param(module, "bias", 0, keep)
        module.in_channels = module.out_channels = module.groups = n
    for name in group.norms:
        module = modules[name]
        _set_param(module, "weight", 0, keep)
        _set_param(module, "bias", 0, keep)
        for buffer in ("running_mean", "running_var"):
            if getattr(module, buffer, None) is not None:
                setattr(module, buffer, _take(getattr(module, buffer), 0, keep))
        module.num_features = n
    for name, per_channel in group.consumers:
        module = modules[name]
        if isinstance(module, nn.Linear):
            features = (keep[:, None] * per_channel + torch.arange(per_channel)[None, :]).flatten()
            _set_param(module, "weight", 1, features)
            module.in_features = int(features.numel())
        else:
            _set_param(module, "weight", 1, keep)
            module.in_channels = n
    return group.producers + group.depthwise + group.norms + [name for name, _ in group.consumers]


def prune_channels(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    ratios: dict[str, float],
    criterion: str = "l1",
) -> dict:
    """Remove channels from every group whose producers all have a ratio in `ratios`.

    `ratios` maps producer layer names (the selected layers) to the fraction of channels to remove;
    a group takes the largest ratio among its producers. Returns a report with the per-group
    before/after channel counts and the new shapes of every changed module.
    """
    if criterion not in CRITERIA:
        raise BadInput(f"unknown channel criterion {criterion!r}", hint="use l1 or zero")
    for name, ratio in ratios.items():
        if not 0.0 <= ratio < 1.0:
            raise BadInput(
                f"channel ratio {ratio} for {name} is outside [0, 1)", hint="e.g. --channel-ratio 0.25"
            )
    groups = channel_groups(model, input_shape)
    modules = dict(model.named_modules())
    changed: set[str] = set()
    report = []
    for group in groups:
        entry = {
            "producers": group.producers,
            "channels": group.channels,
            "kept": group.channels,
            "residual": group.residual,
        }
        selected = all(p in ratios for p in group.producers)
        if not group.prunable or not selected:
            entry["skipped"] = "; ".join(group.frozen[:2]) if group.frozen else "not selected"
            report.append(entry)
            continue
        ratio = max(ratios[p] for p in group.producers)
        keep = channels_to_keep(model, group, ratio, criterion)
        entry["kept"] = int(keep.numel())
        if keep.numel() < group.channels:
            changed.update(remove_channels(model, group, keep))
        report.append(entry)
    shapes = {name: module_shape(modules[name]) for name in modules if name in changed}
    return {"groups": report, "shapes": shapes}
