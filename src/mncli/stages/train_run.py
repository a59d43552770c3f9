"""The body of `mncli train` (split from stages/train.py, which holds the options shared by all stages)."""

from __future__ import annotations

from mncli.engine.callbacks import Callback
from mncli.errors import BadInput
from mncli.log import log
from mncli.stages.train import (
    TrainStageConfig,
    check_model_fits_data,
    final_metrics,
    remove_checkpoints,
    run_training,
)


class KeepMasks(Callback):
    """Layers the input artifact has pruned keep their zero pattern while training goes on."""

    def __init__(self, model, layers: list[str]):
        modules = dict(model.named_modules())
        self.weights = [modules[name].weight for name in layers]
        self.masks = [(w.detach() != 0) for w in self.weights]

    def on_train_start(self, ctx) -> None:
        self.masks = [m.to(w.device) for m, w in zip(self.masks, self.weights, strict=True)]
        self._apply()

    def after_step(self, ctx) -> None:
        self._apply()

    def _apply(self) -> None:
        import torch

        with torch.no_grad():
            for weight, mask in zip(self.weights, self.masks, strict=True):
                weight.mul_(mask)


def _model_from_input(config: TrainStageConfig):
    import torch

    from mncli.bundle import load_bundle

    torch.manual_seed(config.options.seed)  # an architecture-only input is initialised here
    bundle = load_bundle(config.input, require_weights=False)
    locked = {
        name: spec["weight"]["format"]
        for name, spec in bundle.specs.items()
        if spec.get("weight", {}).get("format") in ("ternary", "int")
    }
    if locked:
        name, fmt = next(iter(locked.items()))
        raise BadInput(
            f"{config.input} has {fmt} weights (e.g. {name}); plain training would destroy them",
            hint="fine-tune it with the stage that made it (mncli ternarize / mncli quantize)",
        )
    if config.arch_opts:
        raise BadInput("--arch-opt applies to --arch only", hint="an input artifact keeps its architecture")
    return bundle


def _new_model(config: TrainStageConfig, data):
    import torch

    from mncli.bundle import bundle_from_arch

    args = dict(config.arch_opts)
    args.setdefault("num_classes", data.num_classes)
    args.setdefault("in_channels", data.in_channels)
    args.setdefault("input_size", data.image_size)
    torch.manual_seed(config.options.seed)
    return bundle_from_arch(config.arch, args)


def _check_input_size(arch: dict, data) -> None:
    size = arch.get("args", {}).get("input_size")
    if size is not None and int(size) != int(data.image_size):
        raise BadInput(
            f"the model takes {size} px inputs but {data.name} images are {data.image_size} px",
            hint="choose a model built for this dataset (see `mncli models`)",
        )


def _round_fp16_layers(model, specs: dict) -> None:
    import torch

    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, spec in specs.items():
            if spec.get("weight", {}).get("format") == "float" and int(spec["weight"].get("bits", 32)) == 16:
                weight = modules[name].weight
                weight.copy_(weight.half().float())


def train(config: TrainStageConfig) -> dict:
    from mncli.bundle import save_bundle
    from mncli.engine.runtime import distributed_env

    opts = config.options.validate()
    if (config.arch is None) == (config.input is None):
        raise BadInput(
            "give either an input artifact or --arch NAME", hint="e.g. mncli train --arch lenet5 ..."
        )
    bundle = _model_from_input(config) if config.input is not None else None
    image_size = None
    if bundle is not None and opts.dataset == "imagenet":
        image_size = int(bundle.arch.get("args", {}).get("input_size", 224))
    data = opts.load_data(image_size=image_size)
    if bundle is None:
        bundle = _new_model(config, data)
    what = f"{config.input}" if config.input is not None else f"--arch {config.arch}"
    check_model_fits_data(bundle.arch, data, what=what)
    _check_input_size(bundle.arch, data)
    model = bundle.model
    masked = [name for name, spec in bundle.specs.items() if spec.get("mask")]
    callbacks = [KeepMasks(model, masked)] if masked else []
    params = sum(p.numel() for p in model.parameters())
    rank, _, world = distributed_env()
    if rank == 0:
        log(
            f"training {bundle.arch['name']} ({params:,} parameters) on {data.name}: "
            f"{len(data.train):,} train / {len(data.val):,} val images, {opts.epochs} epochs"
        )
    result = run_training(model, opts, data, callbacks=callbacks, keep_best=config.keep_best)
    if rank != 0:
        _leave_group(world)
        return {"rank": rank}
    for callback in callbacks:
        callback._apply()
    _round_fp16_layers(model, bundle.specs)
    metrics = final_metrics(model, data, result)
    model.cpu().eval()
    record = opts.params()
    record.update(arch=bundle.arch["name"], arch_opts=config.arch_opts, keep_best=config.keep_best)
    if config.input is not None:
        record["input"] = str(config.input)
    manifest = save_bundle(
        bundle, opts.out, stage="train", params=record, metrics=metrics, data=data.info, seed=opts.seed
    )
    remove_checkpoints(opts)
    _leave_group(world)
    score = manifest.get("metrics", {}).get("score") or {}
    return {
        "output": str(opts.out),
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


def _leave_group(world: int) -> None:
    import torch

    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
