"""Engine callbacks for pruning: keep masks applied, step the AGP schedule, add the reweighted-L1 loss.

Masks are applied before the forward pass (`before_step`) and again after every optimiser step
(`after_step`): momentum and weight decay would otherwise revive pruned weights. Gradients of masked
weights are zeroed as they are computed, so optimiser state never builds up behind a mask.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from mncli.compress.prune.agp import AGPSchedule
from mncli.compress.prune.masks import Masker, kept_masks
from mncli.compress.prune.reweighted_l1 import ReweightedL1
from mncli.engine.callbacks import Callback as _Base


def _epoch(ctx) -> int:
    return int(getattr(ctx, "epoch", 0))


def _step(ctx) -> int:
    return int(getattr(ctx, "step", 0))


class MaskCallback(_Base):
    """Keeps `masker`'s masks applied; with `schedule`, prunes gradually on the AGP cubic schedule.

    `finals` maps each layer to its final sparsity (AGP) and is ignored without a schedule.
    `log` receives one line per epoch with the target and achieved sparsity.
    """

    def __init__(
        self,
        masker: Masker,
        *,
        schedule: AGPSchedule | None = None,
        finals: dict[str, float] | None = None,
        global_layers: list[str] | None = None,
        log: Callable[[str], None] | None = None,
    ):
        self.masker = masker
        self.schedule = schedule
        self.finals = dict(finals or {})
        self.global_layers = global_layers  # AGP with one global threshold over these layers
        self.log = log
        self.history: list[dict] = []
        self.last_pruned: int | None = None

    # --- engine hooks
    def on_train_start(self, ctx) -> None:
        self.masker.mask_gradients()
        self.masker.apply()

    def before_step(self, ctx) -> None:
        if self.schedule is not None:
            t = _epoch(ctx) if self.schedule.unit == "epochs" else _step(ctx)
            if self.schedule.is_step(t) and t != self.last_pruned:
                self.prune_at(t)
        self.masker.apply()

    def after_step(self, ctx) -> None:
        self.masker.apply()

    def on_epoch_end(self, ctx, metrics: dict | None = None) -> None:
        if not self.masker.masks:  # nothing masked (e.g. structured fine-tuning of a dense model)
            return
        target, achieved = self.masker.overall()
        record = {
            "epoch": _epoch(ctx) + 1,  # 1-based, like the engine's history and log
            "target": round(target, 6),
            "achieved": round(achieved, 6),
            "max_deviation_weights": self.masker.max_deviation(),
        }
        self.history.append(record)
        if not self.schedule_done and ctx is not None:
            ctx.best_eligible = False  # fewer zeros than the target: never the checkpoint kept
        if isinstance(metrics, dict):
            metrics["sparsity_target"] = record["target"]
            metrics["sparsity"] = record["achieved"]
        if self.log is not None:
            self.log(
                f"epoch {record['epoch']}: sparsity target {target:.4f} achieved {achieved:.4f} "
                f"(largest layer deviation {record['max_deviation_weights']} weights)"
            )

    def on_train_end(self, ctx=None) -> None:
        self.masker.apply()

    def state_dict(self) -> dict:
        return {
            "masks": {k: v.cpu() for k, v in self.masker.masks.items()},
            "targets": dict(self.masker.targets),
            "last_pruned": self.last_pruned,
            "history": list(self.history),
        }

    def load_state_dict(self, state: dict) -> None:
        self.masker.masks = {k: v.bool() for k, v in state.get("masks", {}).items()}
        self.masker.targets = dict(state.get("targets", {}))
        self.last_pruned = state.get("last_pruned")
        self.history = list(state.get("history", []))
        self.masker.mask_gradients()
        self.masker.apply()

    # --- pruning
    @property
    def schedule_done(self) -> bool:
        if self.schedule is None:
            return True
        return self.last_pruned is not None and self.last_pruned >= self.schedule.start + self.schedule.span

    def prune_at(self, t: int) -> None:
        """Prune every scheduled layer to its AGP target at `t` (masks only grow)."""
        self.last_pruned = t
        if self.global_layers:
            self.masker.prune_global(self.global_layers, self.schedule.target(t))
        else:
            self.masker.prune_to(
                {name: self.schedule.target(t, final) for name, final in self.finals.items()}
            )

    def close(self) -> None:
        self.masker.remove_gradient_masks()


class ReweightedL1Callback(_Base):
    """Adds lambda * sum |R * W| to the loss; recomputes R at the end of each milestone epoch.

    `lr_boost` multiplies the peak learning rate at each reweighting (the seed used 1.6).
    """

    def __init__(
        self,
        regulariser: ReweightedL1,
        milestones: list[int],
        *,
        lr_boost: float = 1.0,
        log: Callable[[str], None] | None = None,
    ):
        self.regulariser = regulariser
        self.milestones = sorted(set(milestones))
        self.lr_boost = lr_boost
        self.log = log

    def extra_loss(self, ctx, logits: Tensor, y: Tensor) -> Tensor:
        return self.regulariser.penalty()

    def on_epoch_end(self, ctx, metrics: dict | None = None) -> None:
        finished = _epoch(ctx) + 1
        if isinstance(metrics, dict):
            metrics["rl1_penalty"] = float(self.regulariser.penalty().detach())
        if finished in self.milestones:
            self.regulariser.reweight()
            self._boost_lr(ctx)
            if self.log is not None:
                self.log(
                    f"epoch {_epoch(ctx)}: reweighted L1 weights recomputed (round {self.regulariser.rounds})"
                )

    def _boost_lr(self, ctx) -> None:
        """Raise the peak lr of every group (the engine's schedule scales `base_lr`)."""
        optimizer = getattr(ctx, "optimizer", None)
        if self.lr_boost == 1.0 or optimizer is None:
            return
        for group in optimizer.param_groups:
            group["lr"] *= self.lr_boost
            if "base_lr" in group:
                group["base_lr"] *= self.lr_boost

    def state_dict(self) -> dict:
        return {"reweights": {k: v.cpu() for k, v in self.regulariser.reweights.items()},
                "rounds": self.regulariser.rounds}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        if state.get("reweights"):
            self.regulariser.reweights = dict(state["reweights"])
            self.regulariser.rounds = int(state.get("rounds", 1))


def keep_pruned(model, specs: dict[str, dict]) -> MaskCallback | None:
    """The callback that keeps an input's pruned zeros at zero while any stage trains it: masks
    re-applied around every step and the gradients of masked weights zeroed. None when nothing is pruned."""
    keep = kept_masks(model, specs)
    if not keep:
        return None
    return MaskCallback(Masker(model, [], fixed={name: ~mask for name, mask in keep.items()}))
