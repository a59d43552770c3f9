"""The training options every training stage takes, and the one way a stage runs the engine with them.

`TrainOptions` is declared once: each field's metadata carries its command-line flags, help text and
help panel, so `mncli.cli.options.training_options` turns the dataclass into Typer options for every
training command, and the manifest records it whole as `params["train"]`. A field whose value is None
takes the stage's (or the method's) default, filled in by `resolved(**defaults)`. Every field that
`TrainConfig` also has reaches the engine by name.

    opts = TrainOptions(dataset="fashion-mnist", epochs=10, lr=0.01).resolved(weight_decay=1e-4)
    data = opts.load_data()                           # train / val (held out, split seed 0) / lazy test
    log(loading_line(data))                           # "imagenet at 240 px (the input's resolution): ..."
    result = run_training(model, opts, data, out=out, callbacks=[...], phase="finetune")
    metrics = final_metrics(model, data, result)      # val/test top-1 and top-5, history, runtime

Adding a training option to every command: a field here (flags, help, panel) and, when the engine
uses it, the same field in `engine.config.TrainConfig`.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mncli.errors import BadInput
from mncli.log import log

SPLIT_SEED = 0  # every stage holds out the same validation images, whatever its training seed
EXP_GAMMA = 0.98  # the exp schedule's factor per epoch: the reweighted-L1 seed's (LinLabNEU main.py)
DATA, TRAINING = "Data", "Training"


def _option(default: Any, *flags: str, help: str, panel: str = TRAINING, parse: Any = None,
            cli: tuple[Any, Any] = (str | None, None)) -> Any:  # fmt: skip
    """A TrainOptions field: its default, command-line flags, help and panel. `parse` turns what the
    command line gives into the field's value; `cli` is then that option's (type, default)."""
    metadata = {"flags": flags, "help": help, "panel": panel, "parse": parse, "cli": cli}
    if isinstance(default, list | tuple):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _milestones(text: str | None) -> tuple[float, ...] | None:
    from mncli.text import parse_list

    values = parse_list(text, float, "--milestones", "10,15")
    return None if values is None else tuple(values)


def _off_when_given(flag: bool) -> bool | None:
    return False if flag else None


@dataclass
class TrainOptions:
    """The options of a training run. None: the stage's or the method's default (see `resolved`)."""

    dataset: str | None = _option(
        None, "--dataset", "-d", panel=DATA,
        help="fashion-mnist, mnist, cifar10, cifar100, imagenet or synthetic[:classes=N,shape=CxHxW] "
        "(default: the dataset of the input or of the architecture).",
    )  # fmt: skip
    data_dir: Path | None = _option(
        None, "--data-dir", panel=DATA, help="Where datasets are looked for first (then $MNCLI_DATA)."
    )
    download: bool = _option(False, "--download", panel=DATA, help="Download with torchvision if missing.")
    subset: int | None = _option(
        None, "--subset", panel=DATA, help="Use only N training images (seeded), for quick trials."
    )
    val_size: int | None = _option(
        None, "--val-size", panel=DATA, help="Training images held out for validation (default 5,000)."
    )
    augment: str | None = _option(
        None, "--augment", panel=DATA,
        help="default, none, or e.g. crop=4,flip,cutout=8 (default: the dataset's).",
    )  # fmt: skip
    image_size: int | None = _option(
        None, "--image-size", panel=DATA,
        help="ImageNet: train at N px (random-resized-crop N) and evaluate at N px (resize N/0.875, "
        "centre crop N) (default: the input's resolution; for --arch the architecture's own, e.g. 240 "
        "for efficientnet-b1). The architecture is not changed. Other datasets have a fixed size.",
    )  # fmt: skip
    epochs: int | None = _option(30, "--epochs", help="Training epochs.")
    batch_size: int | None = _option(128, "--batch-size", "-b", help="Batch size per process.")
    optimizer: str | None = _option("sgd", "--optimizer", help="sgd (nesterov), adam or adamw.")
    lr: float | None = _option(0.1, "--lr", help="Peak learning rate.")
    momentum: float | None = _option(0.9, "--momentum", help="SGD momentum.")
    nesterov: bool | None = _option(
        None, "--no-nesterov", parse=_off_when_given, cli=(bool, False),
        help="Plain momentum for SGD instead of Nesterov's (default: Nesterov, unless the method "
        "says otherwise).",
    )  # fmt: skip
    weight_decay: float | None = _option(
        5e-4, "--weight-decay", "--wd", help="Weight decay (not on BatchNorm, biases or scales)."
    )
    schedule: str | None = _option(
        "cosine", "--schedule",
        help="cosine, onecycle, step, exp or constant; exp multiplies the LR by --exp-gamma every epoch "
        "(e.g. --schedule exp --exp-gamma 0.98).",
    )  # fmt: skip
    warmup_epochs: float | None = _option(0.0, "--warmup-epochs", help="Epochs of linear LR warm-up.")
    final_lr_ratio: float | None = _option(
        0.0, "--final-lr-ratio", help="Cosine schedule: end at lr times this."
    )
    milestones: tuple[float, ...] | None = _option(
        None, "--milestones", parse=_milestones,
        help="Step schedule: epochs where the LR is multiplied by --step-gamma, e.g. 10,15.",
    )  # fmt: skip
    step_gamma: float | None = _option(0.1, "--step-gamma", help="Step schedule: the LR factor.")
    exp_gamma: float | None = _option(EXP_GAMMA, "--exp-gamma", help="Exp schedule: the LR factor per epoch.")
    label_smoothing: float | None = _option(0.0, "--label-smoothing", help="Label smoothing.")
    grad_clip: float | None = _option(0.0, "--grad-clip", help="Max gradient norm (0: off).")
    max_steps_per_epoch: int | None = _option(
        None, "--max-steps-per-epoch", help="Cap on batches per epoch (quick trials)."
    )
    teacher: Path | None = _option(
        None, "--teacher", help="Teacher artifact for knowledge distillation (same dataset)."
    )
    kd_temperature: float | None = _option(2.0, "--kd-temperature", help="Distillation temperature T.")
    kd_student_weight: float | None = _option(
        0.5, "--kd-student-weight", help="Distillation: weight of the cross-entropy."
    )
    kd_distill_weight: float | None = _option(
        0.5, "--kd-distill-weight", help="Distillation: weight of T^2 * KL(teacher, student)."
    )
    precision: str | None = _option(
        "auto", "--precision", help="auto, fp32, bf16 (CPU or GPU autocast) or fp16 (CUDA)."
    )
    device: str | None = _option("auto", "--device", help="auto, cpu, cuda or cuda:N.")
    sync_bn: bool = _option(
        False, "--sync-bn",
        help="Under torchrun: BatchNorm statistics over the batches of all processes (SyncBatchNorm); "
        "a no-op in one process.",
    )  # fmt: skip
    seed: int | None = _option(0, "--seed", help="Random seed (initialisation, data order).")
    resume: bool = _option(
        False, "--resume",
        help="Continue where an interrupted run of the same command stopped, from the checkpoint "
        "beside its output (OUT.ckpt/; a grid point's beside its point file); without one, start "
        "from the beginning.",
    )  # fmt: skip

    @classmethod
    def unset(cls, **given: Any) -> TrainOptions:
        """Options whose training fields are all None but those `given`, so that a stage's and a
        method's defaults apply to the rest (what the command line does; see `resolved`)."""
        blank = {f.name: None for f in fields(cls) if f.metadata["panel"] == TRAINING and f.name != "resume"}
        return cls(**{**blank, **given})

    def with_fallbacks(self) -> TrainOptions:
        """A copy whose remaining None fields take the field defaults declared here."""
        return self.resolved(**{f.name: f.default for f in fields(self) if f.default is not MISSING})

    def resolved(self, **defaults: Any) -> TrainOptions:
        """A copy whose None fields take `defaults` (the stage's or the method's)."""
        unknown = set(defaults) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"not training options: {sorted(unknown)}")
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    def config(self, **overrides: Any):
        """The engine's TrainConfig from every option it shares by name (validated: BadInput)."""
        from mncli.engine import TrainConfig

        known = {f.name for f in fields(TrainConfig)}
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name in known}
        values = {k: v for k, v in values.items() if v is not None}
        if self.milestones is not None:
            values["milestones"] = tuple(float(m) for m in self.milestones)
        if self.step_gamma is not None:
            values["gamma"] = self.step_gamma
        values.update(overrides)
        if values.get("schedule") == "exp":
            # lr x gamma each epoch is the engine's step schedule with a milestone at every epoch
            # (torch's ExponentialLR stepped once an epoch: epoch e trains at lr * gamma^e)
            epochs = values.get("epochs", TrainConfig.epochs)
            gamma = self.exp_gamma if self.exp_gamma is not None else EXP_GAMMA
            values.update(schedule="step", milestones=tuple(float(e) for e in range(1, epochs)), gamma=gamma)
        return TrainConfig(**values).validate()

    def validate(self) -> TrainOptions:
        """BadInput for any option out of range, before any data is read."""
        from mncli.data import canonical_name
        from mncli.data.datasets import check_image_size
        from mncli.engine.config import SCHEDULES

        if self.dataset is not None:
            canonical_name(self.dataset)
            self.augmentation()
        schedules = (*SCHEDULES, "exp")  # exp reaches the engine as its step schedule (see `config`)
        if self.schedule is not None and self.schedule not in schedules:
            raise BadInput(
                f"invalid --schedule: {self.schedule!r}", hint="choose one of " + ", ".join(schedules)
            )
        if self.exp_gamma is not None and not 0 < self.exp_gamma <= 1:
            raise BadInput(
                f"--exp-gamma must be in (0, 1], got {self.exp_gamma}", hint="e.g. --exp-gamma 0.98"
            )
        self.config()
        if self.subset is not None and self.subset <= 0:
            raise BadInput(f"--subset must be positive, got {self.subset}", hint="e.g. --subset 2000")
        if self.image_size is not None:
            check_image_size(self.image_size)
        if self.val_size is not None and self.val_size < 0:
            raise BadInput(f"--val-size must be >= 0, got {self.val_size}", hint="e.g. --val-size 5000")
        if self.device is not None and not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise BadInput(f"unknown device {self.device!r}", hint="use auto, cpu, cuda or cuda:N")
        if self.teacher is not None:
            check_teacher(Path(self.teacher))
        return self

    def augmentation(self):
        from mncli.data import default_augment, parse_augment

        return parse_augment(self.augment, default_augment(self.dataset))

    def load_data(self, own_size: int | None = None, whose: str = "the input's resolution"):
        """The dataset, with the validation split of SPLIT_SEED, at the size `image_size_choice`
        picks from --image-size and the model's input size `own_size` (`whose` says whose it is).
        `data.info["image_size_from"]` says why; `loading_line(data)` is the line to log."""
        from mncli.data import load_data

        if self.dataset is None:
            raise BadInput("no dataset given", hint="add --dataset fashion-mnist (or another)")
        size, why = image_size_choice(self.dataset, self.image_size, own_size, whose)
        data = load_data(
            self.dataset, data_dir=self.data_dir, download=self.download, val_size=self.val_size,
            seed=SPLIT_SEED, subset=self.subset, batch_size=self.batch_size or 128,
            augment=self.augmentation(), image_size=size,
        )  # fmt: skip
        data.info["image_size_from"] = why
        return data

    def params(self) -> dict:
        """The manifest's record of the run (`params["train"]`): every option that shapes the result."""
        record = as_record(self)
        for key in ("resume", "download", "data_dir"):
            record.pop(key)
        if self.dataset is not None:
            record["augment"] = self.augmentation().to_dict()
        record["split_seed"] = SPLIT_SEED
        return record


def image_size_choice(dataset: str, given: int | None, own: int | None, whose: str) -> tuple[int | None, str]:
    """(the image size to load `dataset` at, why). ImageNet: `given` (--image-size), else `own` (the
    model's input size; `whose` names it, e.g. "the input's resolution"), else 224; an --image-size
    other than the model's is allowed (networks with global pooling run at any size) and the reason
    names both. A dataset of fixed size: None (its own), or `given`, which load_data refuses unless
    it is the dataset's size."""
    from mncli.data import canonical_name
    from mncli.data.datasets import IMAGENET_SIZE

    if canonical_name(dataset) != "imagenet":
        return given, "--image-size, the dataset's size" if given else "the dataset's size"
    if given is None:
        return (own, whose) if own else (IMAGENET_SIZE, "the default")
    return given, f"--image-size; {whose} is {own} px" if own else "--image-size"


def input_size_of(arch: dict) -> int | None:
    """The input resolution an architecture records (`arch["args"]["input_size"]`), None if none."""
    size = (arch.get("args") or {}).get("input_size")
    return None if size is None else int(size)


def loading_line(data) -> str:
    """What a stage loads, for its log: "imagenet at 240 px (the input's resolution): train
    random-resized-crop 240 + flip, eval resize 274 + centre crop 240"."""
    height, width = data.info["image_shape"][1:]
    size = f"{height}" if height == width else f"{height}x{width}"
    why = data.info.get("image_size_from")
    transforms = data.info.get("transforms") or {}
    return (
        f"{data.name} at {size} px" + (f" ({why})" if why else "")
        + f": train {transforms.get('train', '?')}, eval {transforms.get('eval', '?')}"
    )  # fmt: skip


def as_record(options: Any) -> dict:
    """A dataclass of options as a manifest records it: choices by value, paths as strings."""
    from enum import Enum

    def plain(value: Any) -> Any:
        if isinstance(value, Enum):
            return value.value
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return {f.name: plain(getattr(options, f.name)) for f in fields(options)}


def ckpt_dir(out: Path | None, phase: str | None = None) -> Path | None:
    """OUT.ckpt/ (or OUT.ckpt/PHASE/): where a run writes the checkpoints --resume continues from."""
    from mncli.engine import ckpt_dir_for

    if out is None:
        return None
    folder = ckpt_dir_for(out)
    return folder / phase if phase else folder


def check_writable(out: Path, train: TrainOptions, *inputs: Path | None) -> None:
    """Before any work: OUT may be written (artifact.check_output), OUT.ckpt/ may hold checkpoints,
    and with --resume every checkpoint there is readable."""
    from mncli.artifact import check_output
    from mncli.engine.checkpoint import check_checkpoints

    check_output(out, *inputs)
    folder = ckpt_dir(out)
    if folder.exists() and not folder.is_dir():
        raise BadInput(f"{folder} is a file, where checkpoints go", hint="move it away, or choose another -o")
    if train.resume:
        check_checkpoints(folder)


def remove_checkpoints(out: Path | None) -> None:
    """Delete OUT.ckpt/ once OUT is written."""
    folder = ckpt_dir(out)
    if folder is not None and folder.is_dir():
        shutil.rmtree(folder, ignore_errors=True)


def check_model_fits_data(arch: dict, data, what: str = "the model") -> None:
    """BadInput when the architecture's classes or input channels differ from the dataset's."""
    args = arch.get("args", {})
    for key, have in (("num_classes", data.num_classes), ("in_channels", data.in_channels)):
        if key in args and int(args[key]) != int(have):
            raise BadInput(
                f"{what} has {key}={args[key]} but {data.name} has {have}",
                hint=f"train a new model: mncli train --arch {arch.get('name')} --dataset {data.name} -o OUT",
            )


def check_input_size(arch: dict, data, what: str, hint: str) -> None:
    """BadInput when the model's input size is not the images' on a dataset of fixed size (imagenet
    is read at any size: a size other than the model's is named in `loading_line`)."""
    size = input_size_of(arch)
    if data.name != "imagenet" and size is not None and size != int(data.image_size):
        raise BadInput(
            f"{what} takes {size} px inputs but {data.name} images are {data.image_size} px", hint=hint
        )


def check_teacher(path: Path, data=None) -> None:
    """BadInput, from the teacher's manifest alone, for a teacher that is missing, not an artifact,
    has no weights or (given the data) does not fit the dataset: before any training starts."""
    from mncli.artifact import read_manifest

    if not path.is_file():
        raise BadInput(f"teacher {path} not found", hint="give a trained .safetensors artifact")
    try:
        manifest = read_manifest(path)
    except BadInput as exc:
        raise BadInput(f"teacher {exc.message}", hint="give a trained .safetensors artifact") from None
    if not _has_tensors(path):
        raise BadInput(f"teacher {path} is architecture-only (no weights)", hint="train it first")
    if data is not None:
        check_model_fits_data(manifest.get("arch") or {}, data, what=f"teacher {path}")


def _has_tensors(path: Path) -> bool:
    from mncli.artifact.io import read_header

    header, _, _ = read_header(path)
    return any(key != "__metadata__" for key in header)


def load_teacher(path: Path | None, data):
    if path is None:
        return None
    from mncli.bundle import load_bundle

    bundle = load_bundle(path)
    check_model_fits_data(bundle.arch, data, what=f"teacher {path}")
    return bundle.model


def run_training(model, opts: TrainOptions, data, *, out: Path | None = None, callbacks=(),
                 phase: str | None = None, keep_best: bool = True, **config_overrides: Any):  # fmt: skip
    """One engine run with the options; checkpoints in OUT.ckpt/[PHASE/] when `out` is given (and
    continues from there with --resume). With keep_best the best-on-validation weights end in `model`."""
    from mncli.engine import fit
    from mncli.engine.checkpoint import FILE

    cfg = opts.config(keep_best=keep_best, **config_overrides)
    teacher = load_teacher(opts.teacher, data)
    folder = ckpt_dir(out, phase)
    resume = opts.resume and folder is not None and (folder / FILE).is_file()
    if opts.resume and not resume:
        log(f"no checkpoint in {folder}; starting from the beginning")
    result = fit(
        model, data, cfg, callbacks=list(callbacks), teacher=teacher, ckpt_dir=folder, resume=resume,
        resume_hint="run the same command again with --resume",
    )  # fmt: skip
    if keep_best and result.best_state is not None:
        model.load_state_dict(result.best_state)
    return result


def final_metrics(model, data, result=None, *, device=None, test: bool = True) -> dict:
    """Validation and test top-1/top-5/loss of `model`, plus the run's history and runtime. Under
    torchrun (an initialised group) every rank measures its share and the counts are summed."""
    import torch

    from mncli.engine import evaluate
    from mncli.engine.distributed import group_shard

    device = device or next(model.parameters(), torch.empty(0)).device
    rank, world = group_shard()
    metrics: dict[str, Any] = {}
    splits = [("val", data.val)] + ([("test", data.test)] if test else [])
    for name, split in splits:
        if split is not None and len(split) > 0:
            scores = evaluate(model, split, device, rank=rank, world_size=world)
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
