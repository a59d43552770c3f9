"""Calibration: statistics of each layer's input on a few batches, and post-training scales from them.

`observe_inputs` runs the model in eval mode with hooks and records, per layer, the minimum (a layer
whose input is never negative gets an unsigned quantizer), mean |x| of the first batch (LSQ's
initialisation), max |x| and a sample of |x| for percentile calibration.
Post-training scales (no training): min/max, s = max|v| / Q_P, or percentile, s = q-th percentile of
|v| / Q_P; weights per tensor (per output channel for depthwise), activations per tensor.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from mncli.models.quantized import qrange, quantize_to_codes

_SAMPLE_PER_BATCH = 65536


@dataclass
class InputStats:
    min: float = float("inf")
    max_abs: float = 0.0
    first_mean_abs: float | None = None
    first_batch: torch.Tensor | None = None
    samples: list[torch.Tensor] = field(default_factory=list)

    @property
    def signed(self) -> bool:
        return self.min < 0.0

    def add(self, x: torch.Tensor, keep_first: bool) -> None:
        x = x.detach().float()
        a = x.abs()
        self.min = min(self.min, float(x.min()))
        self.max_abs = max(self.max_abs, float(a.max()))
        if self.first_mean_abs is None:
            self.first_mean_abs = float(a.mean())
            if keep_first:
                self.first_batch = x.cpu()
        flat = a.flatten()
        if flat.numel() > _SAMPLE_PER_BATCH:
            idx = torch.randint(
                flat.numel(), (_SAMPLE_PER_BATCH,), generator=torch.Generator().manual_seed(0)
            )
            flat = flat[idx.to(flat.device)]
        self.samples.append(flat.cpu())

    def percentile(self, q: float) -> float:
        values = torch.cat(self.samples)
        return float(torch.quantile(values, q / 100.0)) if values.numel() else 0.0


def observe_inputs(
    model: nn.Module,
    layers: dict[str, nn.Module],
    batches: Iterable,
    num_batches: int,
    device: torch.device | str = "cpu",
    keep_first: bool = False,
) -> dict[str, InputStats]:
    """Run `num_batches` batches through the model (eval mode, no grad) and record each layer's input."""
    stats = {name: InputStats() for name in layers}
    handles = []
    for name, module in layers.items():

        def hook(mod, args, _name=name):
            stats[_name].add(args[0], keep_first)

        handles.append(module.register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    seen = 0
    try:
        with torch.no_grad():
            for x, _ in batches:
                model(x.to(device))
                seen += 1
                if seen >= num_batches:
                    break
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if seen == 0:
        raise ValueError("no calibration batch")
    return stats


def calibrated_scale(value_range: float, bits: int, signed: bool) -> torch.Tensor:
    """Scale putting `value_range` (max |v| or a percentile of it) at the largest code."""
    _, q_p = qrange(bits, signed)
    return torch.tensor([max(value_range, 1e-8) / q_p])


def act_scale(
    stats: InputStats, bits: int, signed: bool, calibration: str, percentile: float
) -> torch.Tensor:
    if calibration == "minmax":
        return calibrated_scale(stats.max_abs, bits, signed)
    return calibrated_scale(stats.percentile(percentile), bits, signed)


def weight_scale_and_codes(
    weight: torch.Tensor, bits: int, per_channel: bool, calibration: str, percentile: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Post-training (scale, codes) of a weight tensor; signed b-bit codes."""
    q_n, q_p = qrange(bits, signed=True)
    a = weight.detach().abs().float()
    if per_channel:
        rows = a.reshape(a.shape[0], -1)
        if calibration == "minmax":
            top = rows.amax(dim=1)
        else:
            top = torch.quantile(rows, percentile / 100.0, dim=1)
        scale = (top.clamp(min=1e-8) / q_p).reshape((-1,) + (1,) * (a.dim() - 1))
    else:
        top = (
            a.max()
            if calibration == "minmax"
            else torch.quantile(a.flatten()[:16_000_000], percentile / 100.0)
        )
        scale = (top.clamp(min=1e-8) / q_p).reshape(1)
    return scale, quantize_to_codes(weight.detach().float(), scale, q_n, q_p)
