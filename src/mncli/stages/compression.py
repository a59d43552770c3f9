"""What every compression stage (prune, ternarize, quantize) repeats, written once.

A method supplies only what is its own, as a `CompressionMethod`: `check` (before any data is read:
layers, targets, formats, so a typo fails at once) and `apply` (prepare the model, train it with its
callbacks through `run.train`, bake real values back into the layers and write their specs). The file
stage around it, `run_stage`, is the same for every method:

    input bundle -> data at the input's resolution -> accuracy and score before -> method.apply(run)
    -> accuracy and score after -> output artifact with lineage, params["train"] and the method's record

The in-memory API (`mncli.prune(model, ...)`) calls `method.check` and `method.apply` on a `Run` it
builds from a model, without files.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from mncli.errors import MncliError
from mncli.log import log
from mncli.stages.evaluate import dataset_for_input
from mncli.stages.training import (
    TrainOptions,
    check_model_fits_data,
    check_teacher,
    check_writable,
    final_metrics,
    remove_checkpoints,
    run_training,
)


@dataclass
class Run:
    """One compression run: the model (changed in place), its per-layer specs and architecture, the
    data, the resolved training options, and where checkpoints go (`out`, None in memory)."""

    model: Any
    specs: dict[str, dict]
    arch: dict
    data: Any
    options: TrainOptions
    out: Path | None = None
    record: dict = field(default_factory=dict)  # the method's manifest record (compression[stage])

    def train(self, callbacks: list, *, epochs: int | None = None, phase: str | None = None,
              keep_best: bool = True, **config_overrides: Any):  # fmt: skip
        """One engine run with a fresh optimiser, checkpointed in OUT.ckpt/PHASE/."""
        epochs = self.options.epochs if epochs is None else epochs
        log(f"{phase or 'training'}: {epochs} epochs, {self.options.optimizer} lr {self.options.lr}")
        return run_training(
            self.model, self.options, self.data, out=self.out, callbacks=callbacks, phase=phase,
            keep_best=keep_best, epochs=epochs, **config_overrides,
        )  # fmt: skip


class CompressionMethod(Protocol):
    stage: str  # "prune", "ternarize", "quantize": the manifest's stage and compression key

    def options(self, train: TrainOptions) -> TrainOptions:
        """The training options with the method's defaults filled in (`train.resolved(...)`)."""

    def check(self, model, specs: dict, arch: dict, options: TrainOptions) -> None:
        """BadInput for anything wrong that needs no data (layer names, targets, formats, schedules)."""

    def apply(self, run: Run) -> dict:
        """Compress `run.model` in place and update `run.specs`; returns the stage's result fields."""

    def params(self) -> dict:
        """The method's own options, as the manifest records them beside params["train"]."""


def score_or_none(model, specs: dict, arch: dict, dataset: str) -> dict | None:
    """The MicroNet score summary, or None (with a warning) for a model the counter cannot trace."""
    from mncli.bundle import score_summary

    try:
        return score_summary(model, specs, arch, dataset)
    except MncliError as exc:
        log(f"warning: not scored: {exc.message}")
        return None


def input_image_size(arch: dict, dataset: str) -> int | None:
    """The resolution to load the data at: the input's own for ImageNet (scaled networks), else None."""
    if dataset != "imagenet":
        return None
    return int(arch.get("args", {}).get("input_size", 224))


def run_stage(method: CompressionMethod, input: Path, out: Path, train: TrainOptions) -> dict:
    """The file stage: load INPUT, compress with `method`, save OUT; returns the command's result.
    The dataset is the one `train` names, else the one the input was trained on."""
    import torch

    from mncli.bundle import Bundle, load_bundle, save_bundle
    from mncli.engine.runtime import resolve_device

    check_writable(out, train, input)
    started = time.time()
    train = replace(train, dataset=dataset_for_input(input, train.dataset))
    opts = method.options(train).with_fallbacks().validate()
    torch.manual_seed(opts.seed)
    bundle = load_bundle(input, require_weights=True)
    model, specs, arch = bundle.model, copy.deepcopy(bundle.specs), copy.deepcopy(bundle.arch)
    method.check(model, specs, arch, opts)
    data = opts.load_data(image_size=input_image_size(arch, opts.dataset))
    check_model_fits_data(arch, data, what=str(input))
    if opts.teacher is not None:
        check_teacher(Path(opts.teacher), data)
    score_before = score_or_none(model, specs, arch, data.name)
    model.to(resolve_device(opts.device))
    before = final_metrics(model, data)
    log(f"before: val acc {before.get('val_acc', 0):.4f}, test acc {before.get('test_acc', 0):.4f}")
    run = Run(model=model, specs=specs, arch=arch, data=data, options=opts, out=out)
    result = method.apply(run)
    after = final_metrics(run.model, data)
    run.model.cpu().eval()
    score_after = score_or_none(run.model, run.specs, run.arch, data.name)
    metrics = {
        **{k: after.get(k) for k in ("val_acc", "val_top5", "test_acc", "test_top5")},
        "val_acc_before": before.get("val_acc"),
        "test_acc_before": before.get("test_acc"),
        "score": score_after if score_after is not None else {"error": "not scored"},
        "score_before": score_before,
        **result.pop("metrics", {}),
    }
    saved = Bundle(
        model=run.model, arch=run.arch, specs=run.specs, manifest=bundle.manifest, path=bundle.path
    )
    manifest = save_bundle(
        saved, out, stage=method.stage, params={"train": opts.params(), **method.params()}, metrics=metrics,
        data=data.info, seed=opts.seed, compression={method.stage: run.record},
    )  # fmt: skip
    remove_checkpoints(out)
    return {
        "output": str(out),
        **{k: metrics[k] for k in ("val_acc_before", "val_acc", "test_acc_before", "test_acc")},
        "score_before": (score_before or {}).get("score"),
        "score": (score_after or {}).get("score"),
        **result,
        "content_sha256": manifest.get("content_sha256"),
        "input_bytes": Path(input).stat().st_size,
        "file_bytes": Path(out).stat().st_size,
        "wall_time_s": round(time.time() - started, 1),
    }
