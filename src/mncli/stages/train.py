"""`mncli train`, and the shared way every training stage turns its command-line options into a run.

For other stages (prune, ternarize, quantize, search, scale) -- keep the command thin:

    from mncli.stages.train import TrainOptions, run_training, final_metrics

    opts = TrainOptions(dataset="fashion-mnist", epochs=10, lr=0.01, out=out, resume=resume, ...)
    data = opts.load_data()                      # train / val (held out, split seed 0) / lazy test
    result = run_training(model, opts, data, callbacks=[my_callback], phase="finetune")
    metrics = final_metrics(model, data, result)  # val/test top-1 and top-5, history, runtime

`TrainOptions` holds exactly the options `mncli train` has (dataset, data dir, download, subset,
val size, epochs, batch size, optimiser, lr, schedule, warm-up, weight decay, label smoothing, grad
clip, augmentation, teacher, KD weights, device, precision, seed, out, resume); `opts.config()`
makes the engine's TrainConfig, `opts.params()` the manifest's record of them. `run_training` loads
the teacher (checking its classes), checkpoints to OUT.ckpt/<phase>/ (resumable), and loads the
best-on-validation weights into the model (keep_best=True). `check_model_fits_data` refuses a model
whose classes or channels do not match the dataset. `remove_checkpoints(opts)` deletes OUT.ckpt/
once the output artifact is written. Under torchrun only rank 0 may write (engine.runtime.distributed_env).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mncli.errors import BadInput
from mncli.log import log

SPLIT_SEED = 0  # every stage holds out the same validation images, whatever its training seed


@dataclass
class TrainOptions:
    dataset: str
    data_dir: Path | None = None
    download: bool = False
    subset: int | None = None
    val_size: int | None = None
    epochs: int = 30
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    grad_clip: float = 0.0
    augment: str | None = None  # "default", "none" or "crop=4,flip,cutout=8"
    teacher: Path | None = None
    kd_temperature: float = 2.0
    kd_student_weight: float = 0.5
    kd_distill_weight: float = 0.5
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    out: Path | None = None
    resume: bool = False
    max_steps_per_epoch: int | None = None
    extra: dict = field(default_factory=dict)

    def config(self, **overrides: Any):
        """The engine's TrainConfig (validated: a negative lr etc. is BadInput)."""
        from mncli.engine import TrainConfig

        cfg = TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, optimizer=self.optimizer, lr=self.lr,
            momentum=self.momentum, schedule=self.schedule, warmup_epochs=self.warmup_epochs,
            weight_decay=self.weight_decay, label_smoothing=self.label_smoothing, grad_clip=self.grad_clip,
            seed=self.seed, device=self.device, precision=self.precision,
            kd_temperature=self.kd_temperature, kd_student_weight=self.kd_student_weight,
            kd_distill_weight=self.kd_distill_weight, max_steps_per_epoch=self.max_steps_per_epoch,
        )  # fmt: skip
        for key, value in overrides.items():
            setattr(cfg, key, value)
        return cfg.validate()

    def validate(self) -> TrainOptions:
        from mncli.data import canonical_name

        canonical_name(self.dataset)
        self.config()
        self.augmentation()
        if self.subset is not None and self.subset <= 0:
            raise BadInput(f"--subset must be positive, got {self.subset}", hint="e.g. --subset 2000")
        if self.val_size is not None and self.val_size < 0:
            raise BadInput(f"--val-size must be >= 0, got {self.val_size}", hint="e.g. --val-size 5000")
        if self.teacher is not None and not Path(self.teacher).is_file():
            raise BadInput(f"teacher {self.teacher} not found", hint="give a trained .safetensors artifact")
        return self

    def augmentation(self):
        from mncli.data import default_augment, parse_augment

        return parse_augment(self.augment, default_augment(self.dataset))

    def load_data(self, image_size: int | None = None):
        from mncli.data import load_data

        return load_data(
            self.dataset, data_dir=self.data_dir, download=self.download, val_size=self.val_size,
            seed=SPLIT_SEED, subset=self.subset, batch_size=self.batch_size,
            augment=self.augmentation(), image_size=image_size,
        )  # fmt: skip

    def ckpt_dir(self, phase: str | None = None) -> Path | None:
        from mncli.engine import ckpt_dir_for

        if self.out is None:
            return None
        folder = ckpt_dir_for(self.out)
        return folder / phase if phase else folder

    def params(self) -> dict:
        """The manifest's record of the run's options (paths as strings)."""
        record = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
        for key in ("out", "resume", "download", "data_dir", "extra"):
            record.pop(key, None)
        record["augment"] = self.augmentation().to_dict()
        record["split_seed"] = SPLIT_SEED
        return record


def check_model_fits_data(arch: dict, data, what: str = "the model") -> None:
    """BadInput when the architecture's classes or input channels differ from the dataset's."""
    args = arch.get("args", {})
    for key, have in (("num_classes", data.num_classes), ("in_channels", data.in_channels)):
        if key in args and int(args[key]) != int(have):
            raise BadInput(
                f"{what} has {key}={args[key]} but {data.name} has {have}",
                hint=f"train a new model: mncli train --arch {arch.get('name')} --dataset {data.name} -o OUT",
            )


def load_teacher(path: Path | None, data):
    if path is None:
        return None
    from mncli.bundle import load_bundle

    bundle = load_bundle(path)
    check_model_fits_data(bundle.arch, data, what=f"teacher {path}")
    return bundle.model


def run_training(model, opts: TrainOptions, data, *, callbacks=(), phase: str | None = None,
                 keep_best: bool = True, **config_overrides: Any):  # fmt: skip
    """One engine run with the common options; the best-on-validation weights end up in `model`."""
    from mncli.engine import fit

    cfg = opts.config(keep_best=keep_best, **config_overrides)
    teacher = load_teacher(opts.teacher, data)
    resume_hint = "run the same command again with --resume"
    resume = opts.resume and _has_checkpoint(opts.ckpt_dir(phase))
    if opts.resume and not resume:
        log(f"no checkpoint in {opts.ckpt_dir(phase)}; starting from the beginning")
    result = fit(
        model, data, cfg, callbacks=list(callbacks), teacher=teacher, ckpt_dir=opts.ckpt_dir(phase),
        resume=resume, resume_hint=resume_hint,
    )  # fmt: skip
    if keep_best and result.best_state is not None:
        model.load_state_dict(result.best_state)
    return result


def _has_checkpoint(folder: Path | None) -> bool:
    from mncli.engine.checkpoint import FILE

    return folder is not None and (folder / FILE).is_file()


def final_metrics(model, data, result=None, *, device=None, test: bool = True) -> dict:
    """Validation and test top-1/top-5/loss of `model`, plus the run's history and runtime."""
    import torch

    from mncli.engine import evaluate

    device = device or next(model.parameters(), torch.empty(0)).device
    metrics: dict[str, Any] = {}
    splits = [("val", data.val)] + ([("test", data.test)] if test else [])
    for name, split in splits:
        if split is not None and len(split) > 0:
            scores = evaluate(model, split, device)
            metrics.update({f"{name}_acc": scores["top1"], f"{name}_top5": scores["top5"],
                            f"{name}_loss": scores["loss"]})  # fmt: skip
    if result is not None:
        metrics.update(
            epochs_run=len(result.history), best_epoch=result.best_epoch, history=result.history,
            wall_time_s=round(result.wall_time, 1), runtime=result.runtime,
            train_seconds=round(sum(h["seconds"] for h in result.history), 1),
            images_per_s=_mean_rate(result.history),
        )  # fmt: skip
    return metrics


def _mean_rate(history: list[dict]) -> float:
    return round(sum(h["images_per_s"] for h in history) / max(1, len(history)), 1)


def remove_checkpoints(opts: TrainOptions) -> None:
    folder = opts.ckpt_dir()
    if folder is not None and folder.is_dir():
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class TrainStageConfig:
    options: TrainOptions
    arch: str | None = None
    arch_opts: dict = field(default_factory=dict)
    input: Path | None = None
    keep_best: bool = True


def run(config: TrainStageConfig) -> dict:
    """Train a new model (`arch`) or continue an artifact (`input`); save OUT with metrics and score."""
    from mncli.stages.train_run import train

    return train(config)
