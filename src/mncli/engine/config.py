"""TrainConfig: every knob of the training loop, validated once (bad values are BadInput)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from mncli.errors import BadInput

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "onecycle", "step", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"  # sgd uses nesterov momentum unless nesterov=False
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    milestones: tuple[float, ...] = ()  # epochs where `step` multiplies the lr by gamma
    gamma: float = 0.1
    final_lr_ratio: float = 0.0  # cosine ends at lr * final_lr_ratio
    label_smoothing: float = 0.0
    grad_clip: float = 0.0  # max global gradient norm; 0 = off
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CPUs with native bf16, fp16 AMP on CUDA
    channels_last: bool | None = None  # None: on for 4-D conv nets
    kd_temperature: float = 2.0
    kd_student_weight: float = 0.5
    kd_distill_weight: float = 0.5
    keep_best: bool = True  # best-on-validation weights in FitResult.best_state
    max_steps_per_epoch: int | None = None  # cap for quick trials and benchmarks
    drop_last: bool = True  # no tiny last batch (BatchNorm statistics suffer from it)
    sync_bn: bool = False  # under DDP, BatchNorm statistics over all ranks' batches (distributed.py)

    def validate(self) -> TrainConfig:
        def bad(option: str, value, hint: str) -> BadInput:
            return BadInput(f"invalid {option}: {value!r}", hint=hint)

        if self.epochs < 0:
            raise bad("--epochs", self.epochs, "epochs must be >= 0")
        if self.batch_size <= 0:
            raise bad("--batch-size", self.batch_size, "the batch size must be positive, e.g. 128")
        if not self.lr > 0 or self.lr != self.lr or self.lr == float("inf"):
            raise bad("--lr", self.lr, "the learning rate must be a positive number, e.g. 0.1")
        if self.weight_decay < 0:
            raise bad("--weight-decay", self.weight_decay, "weight decay must be >= 0, e.g. 5e-4")
        if not 0 <= self.momentum < 1:
            raise bad("momentum", self.momentum, "momentum must be in [0, 1)")
        if self.optimizer not in OPTIMIZERS:
            raise bad("--optimizer", self.optimizer, "choose one of " + ", ".join(OPTIMIZERS))
        if self.schedule not in SCHEDULES:
            raise bad("--schedule", self.schedule, "choose one of " + ", ".join(SCHEDULES))
        if self.precision not in PRECISIONS:
            raise bad("--precision", self.precision, "choose one of " + ", ".join(PRECISIONS))
        if self.warmup_epochs < 0 or (self.epochs and self.warmup_epochs > self.epochs):
            raise bad("--warmup-epochs", self.warmup_epochs, "warm-up must be between 0 and --epochs")
        if not 0 <= self.final_lr_ratio <= 1:
            raise bad("--final-lr-ratio", self.final_lr_ratio, "the final LR ratio must be in [0, 1]")
        if not 0 <= self.label_smoothing < 1:
            raise bad("--label-smoothing", self.label_smoothing, "label smoothing must be in [0, 1)")
        if self.grad_clip < 0:
            raise bad("--grad-clip", self.grad_clip, "use a positive max norm, or 0 for off")
        if not 0 < self.gamma <= 1:
            raise bad("gamma", self.gamma, "the step schedule's factor must be in (0, 1]")
        if self.kd_temperature <= 0:
            raise bad("--kd-temperature", self.kd_temperature, "the temperature must be positive, e.g. 2")
        if self.kd_student_weight < 0 or self.kd_distill_weight < 0:
            raise bad("KD weights", (self.kd_student_weight, self.kd_distill_weight), "weights must be >= 0")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch <= 0:
            raise bad("max_steps_per_epoch", self.max_steps_per_epoch, "must be positive")
        return self

    def to_dict(self) -> dict:
        out = asdict(self)
        out["betas"] = list(self.betas)
        out["milestones"] = list(self.milestones)
        return out
