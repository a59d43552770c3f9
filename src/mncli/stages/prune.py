"""Stage `prune`: AGP, one-shot magnitude or reweighted-L1 masks, or structured channel removal.

run(config) -> result dict. The output holds the pruned model, per-layer specs ("mask": true, the
method, the target and the achieved sparsity), the schedule, and accuracy and score before and after.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from mncli.errors import BadInput
from mncli.stages.train import TrainOptions

METHODS = ("agp", "magnitude", "reweighted-l1")
UNITS = ("epochs", "steps")
CRITERIA = ("l1", "zero")
# Epochs when --epochs is not given: Distiller's MicroNet AGP run (20 pruning + 20 fine-tuning).
DEFAULT_EPOCHS = {"agp": 40, "magnitude": 20, "reweighted-l1": 40, "structured": 20}


@dataclass
class PruneConfig:
    input: Path
    out: Path
    train: TrainOptions  # the common training options (dataset, data, optimiser, schedule, device, ...)
    method: str = "agp"
    sparsity: float | None = None
    initial_sparsity: float = 0.05
    start: int = 0
    end: int | None = None  # default: half the epochs (epochs unit); required with steps
    freq: int | None = None  # default: 2 epochs or 100 steps
    unit: str = "epochs"
    global_threshold: bool = False
    structured: bool = False
    channel_ratio: float | None = None
    criterion: str = "l1"
    recipe: Path | None = None
    layers: list[str] = field(default_factory=list)
    include_depthwise: bool = True
    rl1_lambda: float = 1e-6
    rl1_eps: float = 1e-3
    reweight_at: list[int] | None = None
    lr_boost: float = 1.0
    retrain_epochs: int | None = None
    # None: the method's default (DEFAULT_EPOCHS, optimizer_settings); these override `train`
    epochs: int | None = None
    lr: float | None = None
    optimizer: str | None = None

    @property
    def mode(self) -> str:
        return "structured" if self.structured else self.method

    @property
    def total_epochs(self) -> int:
        return DEFAULT_EPOCHS[self.mode] if self.epochs is None else self.epochs


def _check_fraction(value: float | None, option: str) -> None:
    if value is not None and not 0.0 <= value < 1.0:
        raise BadInput(
            f"{option} {value} is outside [0, 1)", hint=f"e.g. {option} 0.8 (the fraction removed)"
        )


def validate(cfg: PruneConfig) -> None:
    if cfg.method not in METHODS:
        raise BadInput(f"unknown method {cfg.method!r}", hint="use agp, magnitude or reweighted-l1")
    if cfg.unit not in UNITS:
        raise BadInput(f"unknown unit {cfg.unit!r}", hint="use --unit epochs or --unit steps")
    if cfg.criterion not in CRITERIA:
        raise BadInput(f"unknown channel criterion {cfg.criterion!r}", hint="use --criterion l1 or zero")
    _check_fraction(cfg.sparsity, "--sparsity")
    _check_fraction(cfg.initial_sparsity, "--initial-sparsity")
    _check_fraction(cfg.channel_ratio, "--channel-ratio")
    if cfg.structured:
        if cfg.sparsity is not None or cfg.global_threshold:
            raise BadInput(
                "--structured removes channels (--channel-ratio); --sparsity/--global are for masks",
                hint="prune channels first, then run `mncli prune` again with --sparsity",
            )
        if cfg.channel_ratio is None and cfg.recipe is None and cfg.criterion == "l1":
            raise BadInput(
                "--structured needs --channel-ratio (or a recipe)", hint="e.g. --channel-ratio 0.25"
            )
    elif cfg.sparsity is None and cfg.recipe is None:
        raise BadInput("nothing to prune: give --sparsity or a --recipe", hint="e.g. --sparsity 0.8")
    if cfg.global_threshold and (cfg.recipe is not None or cfg.method == "reweighted-l1"):
        raise BadInput("--global uses one --sparsity for all layers: not with a recipe or reweighted-l1")
    if cfg.global_threshold and cfg.sparsity is None:
        raise BadInput("--global needs --sparsity")
    for name in ("epochs", "retrain_epochs"):
        value = getattr(cfg, name)
        if value is not None and value < 0:
            raise BadInput(f"--{name.replace('_', '-')} must be >= 0, got {value}")
    optimizer, lr = optimizer_settings(cfg)
    replace(cfg.train, epochs=cfg.total_epochs, lr=lr, optimizer=optimizer).validate()
    if cfg.rl1_lambda < 0 or cfg.rl1_eps <= 0:
        raise BadInput("--rl1-lambda must be >= 0 and --rl1-eps > 0")
    if cfg.lr_boost <= 0:
        raise BadInput(f"--lr-boost must be positive, got {cfg.lr_boost}")
    if cfg.method == "agp" and not cfg.structured and cfg.unit == "steps" and cfg.end is None:
        raise BadInput("--unit steps needs --end (the last pruning step)", hint="e.g. --end 2000 --freq 100")


def agp_schedule(cfg: PruneConfig, final: float, steps_per_epoch: int | None):
    """The AGP schedule of a config, with the defaults filled in and checked against the run length."""
    from mncli.compress.prune.agp import AGPSchedule

    epochs = cfg.total_epochs
    if cfg.unit == "epochs":
        end = cfg.end if cfg.end is not None else max(cfg.start + 1, epochs // 2)
        freq = cfg.freq if cfg.freq is not None else 2
        length = epochs
    else:
        end, freq = cfg.end, cfg.freq if cfg.freq is not None else 100
        length = epochs * steps_per_epoch if steps_per_epoch else None
    schedule = AGPSchedule(
        final=final, initial=cfg.initial_sparsity, start=cfg.start, end=end, freq=freq, unit=cfg.unit
    )
    if length is not None and schedule.start + schedule.span >= length:
        raise BadInput(
            f"the AGP schedule's last pruning step ({schedule.start + schedule.span} {cfg.unit}) is not "
            f"inside the run ({length} {cfg.unit})",
            hint="raise --epochs or lower --end",
        )
    return schedule


# Optimiser defaults: the reweighted-L1 seed trained with Adam at 1e-3; the others fine-tune with SGD.
_OPTIMIZER = {"reweighted-l1": ("adam", 1e-3)}
_FINE_TUNE = ("sgd", 0.01)


def optimizer_settings(cfg: PruneConfig) -> tuple[str, float]:
    """(optimizer, peak lr): the options given, else the method's default."""
    optimizer, lr = _FINE_TUNE if cfg.structured else _OPTIMIZER.get(cfg.method, _FINE_TUNE)
    return cfg.optimizer or optimizer, cfg.lr if cfg.lr is not None else lr


def training_options(cfg: PruneConfig) -> TrainOptions:
    """The common training options with the method's optimiser, lr and epochs filled in."""
    optimizer, lr = optimizer_settings(cfg)
    return replace(cfg.train, epochs=cfg.total_epochs, lr=lr, optimizer=optimizer, out=cfg.out)


def config_params(cfg: PruneConfig) -> dict:
    params = {k: v for k, v in asdict(cfg).items() if k != "train"}
    for key in ("input", "out", "recipe"):
        params[key] = None if params[key] is None else str(params[key])
    params.update(training_options(cfg).params())
    return params


def run(cfg: PruneConfig) -> dict:
    from mncli.stages import prune_run

    validate(cfg)
    started = time.time()
    result = prune_run.prune(cfg)
    result["wall_time_s"] = round(time.time() - started, 1)
    return result


__all__ = ["PruneConfig", "agp_schedule", "config_params", "optimizer_settings", "run", "training_options"]
