"""Callbacks: how stages plug masks, quantizers, extra losses and their own optimisers into `fit`.

Order of hooks for each batch:
    before_step(ctx)            ctx.x, ctx.y hold the batch (e.g. an architecture step on ctx.data.val)
    forward, loss (+ extra_loss(ctx, logits, y) of every callback), backward
    after_backward(ctx)         gradients exist: mask them, compute custom scale gradients, step own optims
    optimizer.step()
    after_step(ctx)             re-apply masks, update quantizer scales
and `on_train_start(ctx)` once (after the optimiser exists and a resume has been loaded),
`on_epoch_end(ctx, metrics)` after validation (set ctx.best_eligible = False to keep this epoch's weights
out of the best-on-validation pick, e.g. before a sparsity target is reached; add entries to `metrics`
to have them in the history), `on_train_end(ctx)` at the end.

`param_groups(model)` returns extra optimiser groups ({"params": [...], "lr": ..., "weight_decay": ...};
weight decay defaults to 0 there); those parameters leave the default groups. `state_dict()` must hold
only tensors, numbers, strings, lists and dicts (checkpoints are loaded with weights_only=True).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch


class Callback:
    def on_train_start(self, ctx: Context) -> None: ...

    def param_groups(self, model: torch.nn.Module) -> list[dict]:
        return []

    def before_step(self, ctx: Context) -> None: ...

    def extra_loss(self, ctx: Context, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        return None

    def after_backward(self, ctx: Context) -> None: ...

    def after_step(self, ctx: Context) -> None: ...

    def on_epoch_end(self, ctx: Context, metrics: dict) -> None: ...

    def on_train_end(self, ctx: Context) -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class Context:
    """What callbacks see. `model` is the plain module (not the DDP wrapper); `forward_model` is what
    the loop calls (the DDP wrapper under torchrun). `autocast()` gives the loop's autocast context for a
    callback's own forward passes; `lr_scale` is the schedule's current factor (lr / peak lr)."""

    model: torch.nn.Module
    forward_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    data: Any
    cfg: Any
    device: torch.device
    autocast_dtype: torch.dtype | None = None
    teacher: torch.nn.Module | None = None
    epoch: int = 0
    batch_index: int = 0
    step: int = 0
    steps_per_epoch: int = 0
    total_steps: int = 0
    lr_scale: float = 1.0
    rank: int = 0
    world_size: int = 1
    x: torch.Tensor | None = None
    y: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    best_eligible: bool = True
    stop_training: bool = False
    state: dict = field(default_factory=dict)  # scratch space shared between callbacks

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(
            self.device.type,
            dtype=self.autocast_dtype or torch.float32,
            enabled=self.autocast_dtype is not None,
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0
