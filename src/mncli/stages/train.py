"""Stage `train`: train a registered architecture from scratch, or continue an artifact.

`train_model` is the in-memory core (the Python API's `mncli.train`): it trains a model on loaded
data with the training options; layers an earlier stage pruned keep their zeros (the mask mechanism
holds weights and gradients), fp16 layers are rounded back to half precision at the end. `run` is the
file stage around it: architecture or input artifact in, OUT with metrics and score out.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mncli.errors import BadInput
from mncli.log import log
from mncli.stages.training import (
    TrainOptions,
    check_input_size,
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
class TrainStageConfig:
    """The train command's own options: a new model (`arch`, `arch_opts`) or an input artifact, and
    whether the best-on-validation epoch (default) or the last one is kept."""

    arch: str | None = None
    arch_opts: dict = field(default_factory=dict)
    keep_best: bool = True


def train_model(model, data, train: TrainOptions, *, specs: dict | None = None, out: Path | None = None,
                keep_best: bool = True):  # fmt: skip
    """Train `model` in place on `data` (a DataBundle); returns the engine's FitResult.

    `specs` are the model's per-layer compression specs: pruned layers ("mask": true) keep their
    zeros, fp16 layers end rounded to half precision. With `out`, checkpoints go to OUT.ckpt/.
    """
    from mncli.compress.prune.callbacks import keep_pruned
    from mncli.stages.compression import sync_from_main

    specs = specs or {}
    kept = keep_pruned(model, specs)
    result = run_training(model, train, data, out=out, callbacks=[kept] if kept else [], keep_best=keep_best)
    sync_from_main(model, [kept.masker] if kept is not None else [])  # under torchrun: rank 0's model
    if kept is not None:
        kept.masker.apply()
    _round_fp16_layers(model, specs)
    return result


def _round_fp16_layers(model, specs: dict) -> None:
    import torch

    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, spec in specs.items():
            if spec.get("weight", {}).get("format") == "float" and int(spec["weight"].get("bits", 32)) == 16:
                weight = modules[name].weight
                weight.copy_(weight.half().float())


def _bundle_from_input(path: Path, config: TrainStageConfig, seed: int):
    import torch

    from mncli.bundle import load_bundle

    torch.manual_seed(seed)  # an architecture-only input is initialised here
    bundle = load_bundle(path, require_weights=False)
    locked = {
        name: spec["weight"]["format"]
        for name, spec in bundle.specs.items()
        if spec.get("weight", {}).get("format") in ("ternary", "int")
    }
    if locked:
        name, fmt = next(iter(locked.items()))
        raise BadInput(
            f"{path} has {fmt} weights (e.g. {name}); plain training would destroy them",
            hint="fine-tune it with the stage that made it (mncli ternarize / mncli quantize)",
        )
    if config.arch_opts:
        raise BadInput("--arch-opt applies to --arch only", hint="an input artifact keeps its architecture")
    return bundle


def _new_bundle(config: TrainStageConfig, data, seed: int, input_size: int | None):
    """`config.arch` for the data's classes and channels, at `input_size` (default: the data's)."""
    import torch

    from mncli.bundle import bundle_from_arch

    args = dict(config.arch_opts)
    args.setdefault("num_classes", data.num_classes)
    args.setdefault("in_channels", data.in_channels)
    args.setdefault("input_size", input_size or data.image_size)
    torch.manual_seed(seed)
    return bundle_from_arch(config.arch, args)


def _dataset(input: Path | None, config: TrainStageConfig, asked: str | None) -> str:
    """The dataset asked for, else the input's, else the one the architecture is built for."""
    from mncli.models import default_dataset
    from mncli.stages.evaluate import dataset_for_input

    if input is not None:
        return dataset_for_input(input, asked)
    if config.arch:  # a bad --arch-opt fails here, before any data is read
        from mncli.models.registry import check_args

        check_args(config.arch, config.arch_opts)
    dataset = asked or (default_dataset(config.arch, config.arch_opts) if config.arch else None)
    if not dataset:
        raise BadInput("no dataset given", hint="add --dataset fashion-mnist (or another)")
    return dataset


def _own_size(config: TrainStageConfig, bundle, dataset: str) -> tuple[int | None, str]:
    """(the model's input size, whose it is): the input's; for --arch on imagenet the size the
    architecture is built at (its native resolution, e.g. efficientnet-b1's 240, or --arch-opt
    input_size); None for a dataset of fixed size, whose own the model takes."""
    from mncli.data import canonical_name
    from mncli.stages.score import arch_args_for

    if bundle is not None:
        return input_size_of(bundle.arch), "the input's resolution"
    if canonical_name(dataset) != "imagenet":
        return None, ""
    if "input_size" in config.arch_opts:
        return int(config.arch_opts["input_size"]), "--arch-opt input_size"
    return int(arch_args_for(config.arch, "imagenet", config.arch_opts)["input_size"]), (
        f"{config.arch}'s imagenet resolution"
    )


def run(input: Path | None, out: Path, config: TrainStageConfig, train: TrainOptions) -> dict[str, Any]:
    """Train `config.arch` from scratch or continue INPUT; save OUT with metrics and score. Under
    torchrun every rank trains and measures its share; rank 0 alone writes OUT and returns the
    result, the others {"rank": r} (compression.process_group)."""
    from mncli.stages.compression import process_group

    check_writable(out, train, input)
    opts = replace(train, dataset=_dataset(input, config, train.dataset)).validate()
    if (config.arch is None) == (input is None):
        raise BadInput(
            "give either an input artifact or --arch NAME", hint="e.g. mncli train --arch lenet5 ..."
        )
    with process_group(opts.device) as ranks:
        return _run(input, out, config, opts, ranks)


def _run(input: Path | None, out: Path, config: TrainStageConfig, opts: TrainOptions, ranks) -> dict:
    from mncli.bundle import save_bundle

    bundle = _bundle_from_input(input, config, opts.seed) if input is not None else None
    own_size, whose = _own_size(config, bundle, opts.dataset)
    data = opts.load_data(own_size, whose)
    if bundle is None:
        bundle = _new_bundle(config, data, opts.seed, own_size)
    check_model_fits_data(
        bundle.arch, data, what=str(input) if input is not None else f"--arch {config.arch}"
    )
    check_input_size(
        bundle.arch, data, "the model", "choose a model built for this dataset (see `mncli models`)"
    )
    if opts.teacher is not None:
        check_teacher(Path(opts.teacher), data)
    log(loading_line(data))
    model = bundle.model
    params = sum(p.numel() for p in model.parameters())
    log(
        f"training {bundle.arch['name']} ({params:,} parameters) on {data.name}: "
        f"{len(data.train):,} train / {len(data.val):,} val images, {opts.epochs} epochs"
    )
    result = train_model(model, data, opts, specs=bundle.specs, out=out, keep_best=config.keep_best)
    metrics = final_metrics(model, data, result)  # under torchrun each rank measures its share
    if not ranks.is_main:
        return {"rank": ranks.rank}
    model.cpu().eval()
    record = {"train": opts.params(), "arch": bundle.arch["name"], "arch_opts": config.arch_opts,
              "keep_best": config.keep_best, "input": None if input is None else str(input)}  # fmt: skip
    manifest = save_bundle(
        bundle, out, stage="train", params=record, metrics=metrics, data=data.info, seed=opts.seed
    )
    remove_checkpoints(out)
    score = manifest.get("metrics", {}).get("score") or {}
    return {
        "output": str(out),
        "arch": bundle.arch["name"],
        "dataset": data.name,
        "params": params,
        "epochs": opts.epochs,
        "best_epoch": result.best_epoch,
        "val_acc": metrics.get("val_acc"),
        "test_acc": metrics.get("test_acc"),
        "test_top5": metrics.get("test_top5"),
        "score": score.get("score"),
        "ops": score.get("ops"),
        "wall_time_s": metrics.get("wall_time_s"),
        "images_per_s": metrics.get("images_per_s"),
        "runtime": result.runtime,
    }
