"""The unstructured pruning methods as drivers around a training function: AGP (with one schedule, or
a Distiller schedule file's pruners), one-shot magnitude, a magnitude threshold, reweighted L1.

Each driver gets a `train(callbacks, *, epochs, phase, keep_best=True)` function from the stage
(`compression.Run.train`, which owns data, optimiser settings and checkpoints), so the methods here
know only masks and schedules. Every call of `train` builds a fresh optimiser: reweighted L1's
retraining phase depends on it. After each call the masks are applied once more (the kept weights
went through them already; this makes it certain).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from mncli.compress.prune.agp import AGPSchedule
from mncli.compress.prune.callbacks import MaskCallback, ReweightedL1Callback
from mncli.compress.prune.distiller import DistillerCallback, DistillerPlan
from mncli.compress.prune.masks import Masker
from mncli.compress.prune.reweighted_l1 import ReweightedL1
from mncli.log import log

TrainFn = Callable[..., object]  # train(callbacks, *, epochs, phase, keep_best=True)


def _train(train: TrainFn, masker: Masker, callbacks: list, epochs: int, phase: str, keep_best: bool = True):
    train(callbacks, epochs=epochs, phase=phase, keep_best=keep_best)
    masker.apply()


def _log_pruned(masker: Masker, when: str) -> None:
    target, achieved = masker.overall()
    log(f"{when}: sparsity target {target:.4f} achieved {achieved:.4f} over {len(masker.masks)} layers")


def run_agp(
    masker: Masker,
    finals: dict[str, float],
    schedule: AGPSchedule,
    train: TrainFn,
    epochs: int,
    *,
    global_sparsity: float | None = None,
) -> dict:
    """Gradual pruning on the cubic schedule, then fine-tuning with the final mask, in one run."""
    callback = MaskCallback(
        masker,
        schedule=schedule,
        finals=finals,
        global_layers=list(finals) if global_sparsity is not None else None,
        log=log,
    )
    try:
        _train(train, masker, [callback], epochs, "agp")
    finally:
        callback.close()
    if callback.last_pruned is None or callback.last_pruned < schedule.start + schedule.span:
        # training ended before the last pruning step (e.g. --epochs shorter than the schedule)
        callback.prune_at(schedule.start + schedule.span)
        log("the schedule had not reached its final step: pruned to the final targets without fine-tuning")
    return {"history": callback.history, "schedule": schedule.as_dict()}


def run_distiller(masker: Masker, plan: DistillerPlan, train: TrainFn, epochs: int) -> dict:
    """A Distiller schedule: every pruner on its own AGP window, the LR policies, then fine-tuning with
    the final masks, in one run. Without training (--epochs 0) the layers go straight to their finals."""
    callback = DistillerCallback(masker, plan, log=log)
    try:
        if epochs > 0:
            _train(train, masker, [callback], epochs, "agp")
    finally:
        callback.close()
    if not callback.schedule_done:
        masker.prune_to(plan.finals())
        _log_pruned(masker, "no training: pruned to the schedule's final targets")
    return {"history": callback.history, "pruning_steps": callback.steps, "schedule": plan.record(epochs)}


def run_threshold(
    masker: Masker, layers: list[str], threshold: float, train: TrainFn, epochs: int, relative: bool = False
) -> dict:
    """Every weight with |w| < threshold (times its layer's max |w| when `relative`, as EC2T's
    --prune-threshold) zeroed at once, then (epochs > 0) fine-tuning, mask fixed."""
    masker.prune_below(threshold, layers, relative=relative)
    _log_pruned(masker, f"|w| < {threshold:g}{' x max|w|' if relative else ''} zeroed")
    return {"history": _fine_tune_masked(masker, train, epochs), "threshold": threshold, "relative": relative}


def run_magnitude(
    masker: Masker,
    targets: dict[str, float],
    train: TrainFn,
    epochs: int,
    *,
    global_sparsity: float | None = None,
) -> dict:
    """One-shot magnitude pruning (per layer or one global threshold), then fine-tuning, mask fixed."""
    if global_sparsity is not None:
        masker.prune_global(list(targets), global_sparsity)
    else:
        masker.prune_to(targets)
    _log_pruned(masker, "one-shot pruning")
    return {"history": _fine_tune_masked(masker, train, epochs)}


def _fine_tune_masked(masker: Masker, train: TrainFn, epochs: int) -> list:
    """Fine-tune with the masks fixed (weights and gradients); returns the mask callback's history."""
    callback = MaskCallback(masker, log=log)
    try:
        if epochs > 0:
            _train(train, masker, [callback], epochs, "finetune")
    finally:
        callback.close()
    return callback.history


def run_reweighted_l1(
    model: nn.Module,
    masker: Masker,
    targets: dict[str, float],
    train: TrainFn,
    epochs: int,
    retrain_epochs: int,
    *,
    lam: float,
    eps: float,
    milestones: list[int],
    lr_boost: float = 1.0,
) -> dict:
    """Phase 1: train with lambda * sum |W| / (|W| + eps), reweighted at milestones. Phase 2: prune to
    the per-layer targets and retrain from a fresh optimiser with masked gradients and re-masking."""
    regulariser = ReweightedL1(model, list(targets), lam=lam, eps=eps)
    keep_fixed = MaskCallback(masker)  # zeros of an earlier stage stay zero during phase 1 too
    phase1 = ReweightedL1Callback(regulariser, milestones, lr_boost=lr_boost, log=log)
    try:
        if epochs > 0:
            _train(train, masker, [phase1, keep_fixed], epochs, "regularise", keep_best=False)
    finally:
        keep_fixed.close()
    masker.prune_to(targets, keep_current=True)
    _log_pruned(masker, "hard pruning after the regularised phase")
    retrain = MaskCallback(masker, log=log)
    try:
        if retrain_epochs > 0:
            _train(train, masker, [retrain], retrain_epochs, "retrain")
    finally:
        retrain.close()
    return {
        "history": retrain.history,
        "reweighting_rounds": regulariser.rounds,
        "milestones": milestones,
        "final_penalty": float(regulariser.penalty().detach()),
    }
