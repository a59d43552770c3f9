"""What every compression stage (prune, ternarize, quantize) repeats, written once.

A method supplies only what is its own, as a `CompressionMethod`: `check` (before any data is read:
layers, targets, formats, so a typo fails at once) and `apply` (prepare the model, train it with its
callbacks through `run.train`, bake real values back into the layers and write their specs). The file
stage around it, `run_stage`, is the same for every method:

    input bundle -> data (ImageNet at the input's resolution, or --image-size) -> accuracy and
    score before -> method.apply(run) -> accuracy and score after -> output artifact with lineage,
    params["train"] and the method's record

The in-memory API (`mncli.prune(model, ...)`) calls `method.check` and `method.apply` on a `Run` it
builds from a model, without files.

Under torchrun every file stage runs on every rank inside `process_group` (joined at the start, left
with a barrier and destroy_process_group at the end): every rank trains (DDP) and evaluates its share
of each split; rank 0 alone writes and returns the result, the other ranks return {"rank": r} (the
CLI prints nothing for them, `other_rank(result)`). What ranks could hold differently is made rank 0's:
after every training run the model (parameters and buffers: BatchNorm statistics differ between
ranks) and the masks of its callbacks (`sync_from_main`), and what a stage computes from data alone,
such as calibration statistics (`from_main`).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from mncli.errors import MncliError
from mncli.log import log, warn
from mncli.stages.evaluate import dataset_for_input
from mncli.stages.training import (
    TrainOptions,
    check_model_fits_data,
    check_teacher,
    check_writable,
    final_metrics,
    input_size_of,
    loading_line,
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
        result = run_training(
            self.model, self.options, self.data, out=self.out, callbacks=callbacks, phase=phase,
            keep_best=keep_best, epochs=epochs, **config_overrides,
        )  # fmt: skip
        maskers = [cb.masker for cb in callbacks if getattr(cb, "masker", None) is not None]
        sync_from_main(self.model, maskers, what=phase or "training")
        return result


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


# --- under torchrun: one process group per stage; rank 0 writes and prints
_LOGGER = logging.getLogger("mncli")
_depth = [0]  # stages entered and not yet left in this process (a grid point runs inside its grid)


@dataclass(frozen=True)
class Ranks:
    """Where this process stands: its rank, the world size and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    device: Any = None  # torch.device of the joined group; None outside torchrun

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def in_group() -> bool:
    """True inside an initialised process group of more than one process."""
    import torch

    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextmanager
def process_group(device: str | None = "auto") -> Iterator[Ranks]:
    """A file stage's time in the torchrun process group: joins it when run by torchrun (the
    engine's `configure`, so the backend and the rank's device are the engine's), yields this
    process's `Ranks`, and at the end of the outermost stage leaves it (`leave_group`) so every
    process exits cleanly. Ranks other than 0 log only warnings. Outside torchrun: Ranks(0, 1)."""
    from mncli.engine.runtime import configure, distributed_env

    rank, _, world = distributed_env()
    _depth[0] += 1
    level = _LOGGER.level
    ok = False
    try:
        ranks = Ranks(rank, world)
        if world > 1:
            ranks = Ranks(rank, world, configure(device or "auto", "fp32").device)
            if rank != 0 and _LOGGER.getEffectiveLevel() < logging.WARNING:
                _LOGGER.setLevel(logging.WARNING)
        yield ranks
        ok = True
    finally:
        _depth[0] -= 1
        if _depth[0] == 0:
            _LOGGER.setLevel(level)
            from mncli.engine.distributed import leave_group

            leave_group(wait=ok)


def other_rank(result: dict) -> bool:
    """True for the result of a rank other than 0 under torchrun: the command prints nothing."""
    return int(result.get("rank", 0)) != 0 and "output" not in result


def from_main(compute: Callable[[], Any]) -> Any:
    """`compute()` on rank 0 and its (picklable) result on every rank; `compute()` outside a group.
    For what must be identical everywhere and depends on more than the weights (calibration)."""
    if not in_group():
        return compute()
    import torch

    box = [compute() if torch.distributed.get_rank() == 0 else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def sync_from_main(model, maskers=(), *, what: str = "training") -> list[str]:
    """Make every rank hold rank 0's model (parameters and buffers) and masks (`Masker.masks`).
    Returns the parameters and masks that differed on this rank before (DDP keeps parameters
    identical and masks follow from them: anything listed is a bug, and logged as a warning;
    BatchNorm buffers differ by design and are not listed). No-op outside a group."""
    if not in_group():
        return []
    import torch

    dist = torch.distributed
    differed = []
    params = {name for name, _ in model.named_parameters()}
    with torch.no_grad():
        tensors = [*model.named_parameters(), *model.named_buffers()]
        for name, tensor in tensors:
            local = tensor.detach().clone() if name in params else None
            dist.broadcast(tensor.data, src=0)
            if local is not None and not torch.equal(local, tensor.data):
                differed.append(name)
        for masker in maskers:
            for name in sorted(masker.masks):
                mask = masker.masks[name]
                # on the weight's device (the rank's), as bytes: gloo and nccl both broadcast them
                shared = mask.to(device=masker.weight(name).device, dtype=torch.uint8)
                dist.broadcast(shared, src=0)
                if not torch.equal(shared.bool(), mask.bool()):
                    differed.append(f"mask of {name}")
                masker.masks[name] = shared.bool()
            masker.apply()
    if differed:
        _LOGGER.warning(
            f"warning: after {what}, rank {dist.get_rank()} differed from rank 0 in {len(differed)} "
            f"tensors (e.g. {differed[0]}); rank 0's are kept"
        )
    return differed


def score_or_none(model, specs: dict, arch: dict, dataset: str) -> dict | None:
    """The MicroNet score summary, or None (with a warning) for a model the counter cannot trace."""
    from mncli.bundle import score_summary

    try:
        return score_summary(model, specs, arch, dataset)
    except MncliError as exc:
        warn(f"not scored: {exc.message}")
        return None


def run_stage(method: CompressionMethod, input: Path, out: Path, train: TrainOptions) -> dict:
    """The file stage: load INPUT, compress with `method`, save OUT; returns the command's result.
    The dataset is the one `train` names, else the one the input was trained on. Under torchrun
    every rank runs it (see `process_group`); rank 0 alone writes OUT and returns the result."""
    check_writable(out, train, input)
    started = time.time()
    train = replace(train, dataset=dataset_for_input(input, train.dataset))
    opts = method.options(train).with_fallbacks().validate()
    with process_group(opts.device) as ranks:
        return _run_stage(method, Path(input), Path(out), opts, ranks, started)


def _run_stage(method: CompressionMethod, input: Path, out: Path, opts: TrainOptions, ranks: Ranks,
               started: float) -> dict:  # fmt: skip
    import torch

    from mncli.bundle import Bundle, load_bundle, save_bundle
    from mncli.engine.runtime import resolve_device

    torch.manual_seed(opts.seed)
    bundle = load_bundle(input, require_weights=True)
    model, specs, arch = bundle.model, copy.deepcopy(bundle.specs), copy.deepcopy(bundle.arch)
    method.check(model, specs, arch, opts)
    data = opts.load_data(input_size_of(arch), "the input's resolution")
    check_model_fits_data(arch, data, what=str(input))
    if opts.teacher is not None:
        check_teacher(Path(opts.teacher), data)
    score_before = score_or_none(model, specs, arch, data.name) if ranks.is_main else None
    model.to(ranks.device or resolve_device(opts.device))
    log(loading_line(data))
    before = final_metrics(model, data)  # under torchrun each rank measures its share
    log(f"before: val acc {before.get('val_acc', 0):.4f}, test acc {before.get('test_acc', 0):.4f}")
    run = Run(model=model, specs=specs, arch=arch, data=data, options=opts, out=out)
    result = method.apply(run)
    sync_from_main(run.model, what=method.stage)  # what every rank measures is rank 0's model
    after = final_metrics(run.model, data)
    if not ranks.is_main:
        return {"rank": ranks.rank}
    run.model.cpu().eval()
    score_after = score_or_none(run.model, run.specs, run.arch, data.name)
    metrics = {
        **{
            k: after.get(k) for k in ("val_acc", "val_top5", "val_loss", "test_acc", "test_top5", "test_loss")
        },
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
        "world_size": ranks.world_size,
    }
