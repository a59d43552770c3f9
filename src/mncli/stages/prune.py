"""Stage `prune`: AGP, one-shot magnitude, magnitude threshold or reweighted-L1 masks, or structured
channel removal.

`Pruning(config)` is the CompressionMethod; `run(input, out, config, train)` the file stage. The output
holds the pruned model, per-layer specs ("mask": true, the method, the target and the achieved
sparsity), the schedule, and accuracy and score before and after. Zeros of an already pruned input
stay zero (`kept_masks`).

`--recipe` takes a Distiller schedule too (`version` + `pruners`, compress/prune/distiller.py): AGP
with each pruner's own sparsities and epochs and the file's LR policies, recorded with the file's
sha256 and every layer's targets and window. `--threshold T` zeroes every |w| < T (all conv/linear
layers unless --layers), without fine-tuning unless --epochs says so.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from mncli.errors import BadInput
from mncli.log import log
from mncli.stages.compression import Run, run_stage
from mncli.stages.training import EXP_GAMMA, TrainOptions, as_record
from mncli.text import parse_choice


class PruneMethod(StrEnum):
    AGP = "agp"
    MAGNITUDE = "magnitude"
    REWEIGHTED_L1 = "reweighted-l1"
    THRESHOLD = "threshold"


class Unit(StrEnum):
    EPOCHS = "epochs"
    STEPS = "steps"


class Criterion(StrEnum):
    L1 = "l1"
    ZERO = "zero"


# Epochs when --epochs is not given: Distiller's MicroNet AGP run (20 pruning + 20 fine-tuning); the
# reweighted-L1 seed's 300 regularised epochs (its masked retraining, --retrain-epochs, is as long);
# none for a threshold (EC2T's `--prune-threshold` before scoring). A Distiller schedule: its own.
DEFAULT_EPOCHS = {"agp": 40, "magnitude": 20, "reweighted-l1": 300, "structured": 20, "threshold": 0}
WEIGHT_DECAY = 1e-4
# Training defaults: the others fine-tune with SGD; reweighted L1 trains as its seed did (LinLabNEU's
# "Reweighted pruning", training/run.sh and main.py): Adam 1e-3 without weight decay, batch 64, and
# the LR x0.98 every epoch (x1.6 at each reweighting: RL1_LR_BOOST).
_FINE_TUNE = {"optimizer": "sgd", "lr": 0.01, "weight_decay": WEIGHT_DECAY}
_TRAINING = {
    "reweighted-l1": {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "batch_size": 64,
                      "schedule": "exp", "exp_gamma": EXP_GAMMA},
}  # fmt: skip
RL1_LAMBDA, RL1_EPS = 1e-6, 1e-3  # the reweighted-L1 seed's penalty weight and 1/(|W|+eps)
RL1_LR_BOOST = 1.6  # the seed's LR factor at each reweighting (epochs 60/120/180/240 of 300)


@dataclass
class PruneConfig:
    """The options of `mncli prune` that are its own (the training options are a TrainOptions)."""

    method: PruneMethod = PruneMethod.AGP
    sparsity: float | None = None
    initial_sparsity: float = 0.05
    start: int = 0
    end: int | None = None  # default: half the epochs (epochs unit); required with steps
    freq: int | None = None  # default: 2 epochs or 100 steps
    unit: Unit = Unit.EPOCHS
    global_threshold: bool = False
    structured: bool = False
    channel_ratio: float | None = None
    criterion: Criterion = Criterion.L1
    recipe: Path | None = None
    layers: list[str] = field(default_factory=list)
    include_depthwise: bool = True
    rl1_lambda: float | None = None  # reweighted-l1 only; None: RL1_LAMBDA
    rl1_eps: float | None = None  # reweighted-l1 only; None: RL1_EPS
    reweight_at: list[int] | None = None
    lr_boost: float | None = None  # reweighted-l1 only; None: RL1_LR_BOOST
    retrain_epochs: int | None = None
    threshold: float | None = None  # the threshold method: |w| below it becomes zero
    relative_threshold: bool = False  # the threshold is a fraction of each layer's max |w| (EC2T's)

    @property
    def mode(self) -> str:
        """ "structured" or the mask method: what the default epochs and optimiser depend on."""
        return "structured" if self.structured else str(self.method)

    def validate(self) -> PruneConfig:
        """BadInput for any option out of range or in conflict (choices given as text are converted)."""
        self.method = parse_choice(PruneMethod, self.method, "--method")
        self.unit = parse_choice(Unit, self.unit, "--unit")
        self.criterion = parse_choice(Criterion, self.criterion, "--criterion")
        _check_fraction(self.sparsity, "--sparsity")
        _check_fraction(self.initial_sparsity, "--initial-sparsity")
        _check_fraction(self.channel_ratio, "--channel-ratio")
        self._check_threshold()
        if self.structured:
            if self.sparsity is not None or self.global_threshold:
                raise BadInput(
                    "--structured removes channels (--channel-ratio); --sparsity/--global are for masks",
                    hint="prune channels first, then run `mncli prune` again with --sparsity",
                )
            if self.channel_ratio is None and self.recipe is None and self.criterion == Criterion.L1:
                raise BadInput(
                    "--structured needs --channel-ratio (or a recipe)", hint="e.g. --channel-ratio 0.25"
                )
        elif self.sparsity is None and self.recipe is None and self.method != PruneMethod.THRESHOLD:
            raise BadInput("nothing to prune: give --sparsity or a --recipe", hint="e.g. --sparsity 0.8")
        if self.global_threshold and (self.recipe is not None or self.method == PruneMethod.REWEIGHTED_L1):
            raise BadInput("--global uses one --sparsity for all layers: not with a recipe or reweighted-l1")
        if self.global_threshold and self.sparsity is None:
            raise BadInput("--global needs --sparsity")
        if self.retrain_epochs is not None and self.retrain_epochs < 0:
            raise BadInput(f"--retrain-epochs must be >= 0, got {self.retrain_epochs}")
        rl1_only = {"--rl1-lambda": self.rl1_lambda, "--rl1-eps": self.rl1_eps, "--lr-boost": self.lr_boost,
                    "--reweight-at": self.reweight_at, "--retrain-epochs": self.retrain_epochs}  # fmt: skip
        given = [flag for flag, value in rl1_only.items() if value is not None]
        if given and (self.method != PruneMethod.REWEIGHTED_L1 or self.structured):
            raise BadInput(f"{given[0]} belongs to --method reweighted-l1", hint=f"drop {given[0]}")
        if self.channel_ratio is not None and not self.structured:
            raise BadInput(
                "--channel-ratio belongs to --structured", hint="add --structured, or use --sparsity"
            )
        if (
            self.rl1_lambda is not None
            and self.rl1_lambda < 0
            or self.rl1_eps is not None
            and self.rl1_eps <= 0
        ):
            raise BadInput("--rl1-lambda must be >= 0 and --rl1-eps > 0")
        if self.lr_boost is not None and self.lr_boost <= 0:
            raise BadInput(f"--lr-boost must be positive, got {self.lr_boost}")
        if (
            self.sparsity is not None
            and self.method == PruneMethod.AGP
            and self.initial_sparsity > self.sparsity
        ):
            raise BadInput(
                f"--initial-sparsity {self.initial_sparsity} is above the final --sparsity {self.sparsity}",
                hint="AGP rises from the initial to the final sparsity",
            )
        if (
            self.method == PruneMethod.AGP
            and not self.structured
            and self.unit == Unit.STEPS
            and self.end is None
        ):
            raise BadInput(
                "--unit steps needs --end (the last pruning step)", hint="e.g. --end 2000 --freq 100"
            )
        return self

    def _check_threshold(self) -> None:
        """--threshold selects the threshold method, which takes no target sparsity."""
        if self.threshold is None:
            if self.method == PruneMethod.THRESHOLD:
                raise BadInput("--method threshold needs --threshold T", hint="e.g. --threshold 0.01")
            if self.relative_threshold:
                raise BadInput("--relative-threshold needs --threshold T", hint="e.g. --threshold 0.01")
            return
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int | float):
            raise BadInput(f"--threshold must be a number, got {self.threshold!r}")
        if not (math.isfinite(self.threshold) and self.threshold > 0):
            raise BadInput(f"--threshold must be > 0, got {self.threshold}", hint="e.g. --threshold 0.01")
        if self.method not in (PruneMethod.AGP, PruneMethod.THRESHOLD):  # AGP: the option's default
            raise BadInput(f"--threshold is its own method, not one of --method {self.method}")
        given = {"--sparsity": self.sparsity is not None, "--recipe": self.recipe is not None,
                 "--global": self.global_threshold, "--structured": self.structured}  # fmt: skip
        for flag, on in given.items():
            if on:
                raise BadInput(f"--threshold zeroes |w| below it: not with {flag}", hint=f"drop {flag}")
        self.method = PruneMethod.THRESHOLD


def _check_fraction(value: float | None, option: str) -> None:
    if value is not None and not 0.0 <= value < 1.0:
        raise BadInput(
            f"{option} {value} is outside [0, 1)", hint=f"e.g. {option} 0.8 (the fraction removed)"
        )


def _refuse_other_formats(specs: dict, pruned: set[str], trains: bool) -> None:
    """BadInput for a ternary/int/fp16 layer that the run prunes, or any such layer when it trains."""
    for name, spec in specs.items():
        weight = spec.get("weight", {})
        if (name in pruned or trains) and (
            weight.get("format", "float") != "float" or int(weight.get("bits", 32)) < 32
        ):
            raise BadInput(
                f"layer {name} is already {weight.get('format')} {weight.get('bits')}-bit: pruning and "
                "fine-tuning would move its values off that format",
                hint="prune before ternarize/quantize (a pruned model stays pruned through them)",
            )


def _kept_zeros(model, specs: dict) -> dict:
    """The zeros of layers the input already has pruned (Masker's `fixed`): they are kept."""
    from mncli.compress.prune.masks import kept_masks

    return {name: ~keep for name, keep in kept_masks(model, specs).items()}


class Pruning:
    """The prune CompressionMethod: masks to per-layer sparsities, or channels removed (structured)."""

    stage = "prune"

    def __init__(self, config: PruneConfig):
        self.config = config.validate()
        self.distiller = self._distiller_schedule()  # None unless --recipe is a Distiller schedule

    def _distiller_schedule(self):
        """The recipe file read as a Distiller schedule (None for a plain recipe); BadInput for an
        option that the schedule's own pruners and policies decide."""
        from mncli.compress.prune.distiller import read_schedule

        cfg = self.config
        schedule = read_schedule(cfg.recipe) if cfg.recipe is not None else None
        if schedule is None:
            return None
        conflicts = {
            "--method": cfg.method != PruneMethod.AGP, "--structured": cfg.structured,
            "--sparsity": cfg.sparsity is not None, "--layers": bool(cfg.layers),
            "--exclude-depthwise": not cfg.include_depthwise, "--unit": cfg.unit != Unit.EPOCHS,
            "--start": cfg.start != 0, "--end": cfg.end is not None, "--freq": cfg.freq is not None,
        }  # fmt: skip
        for flag, given in conflicts.items():
            if given:
                raise BadInput(
                    f"{flag} does not apply to Distiller schedule {cfg.recipe}: its pruners and policies "
                    "set the layers, sparsities and epochs (AGP)",
                    hint=f"drop {flag}",
                )
        return schedule

    # --- CompressionMethod
    def options(self, train: TrainOptions) -> TrainOptions:
        """The method's epochs, optimiser, lr, weight decay (and for reweighted L1 batch size and
        schedule) where `train` leaves them None. A Distiller schedule: its last ending_epoch, and a
        constant LR that only its LR policies change."""
        if self.distiller is not None:
            return train.resolved(epochs=self.distiller.last_epoch, schedule="constant", **_FINE_TUNE)
        mode = self.config.mode
        return train.resolved(epochs=DEFAULT_EPOCHS[mode], **_TRAINING.get(mode, _FINE_TUNE))

    def check(self, model, specs: dict, arch: dict, options: TrainOptions) -> None:
        """Layers, targets, the input's formats and the AGP schedule (epochs unit), before any data."""
        targets = self.targets(model, specs, options)
        cfg = self.config
        if self.distiller is not None:
            self._check_distiller(model, options)
        elif cfg.method == PruneMethod.AGP and not cfg.structured and cfg.unit == Unit.EPOCHS:
            self.schedule(options.epochs, self._final(targets), None)

    def _check_distiller(self, model, options: TrainOptions) -> None:
        plan = self.distiller.plan(model)
        if self.distiller.lr_policies and options.schedule != "constant":
            raise BadInput(
                f"--schedule {options.schedule} would change the LR that the LR policies of "
                f"{self.distiller.path} set",
                hint="drop --schedule (or remove the file's lr_scheduler policies)",
            )
        last = plan.last_pruning_epoch
        if options.epochs != 0 and last >= options.epochs:
            raise BadInput(
                f"the last pruning epoch of {self.distiller.path} ({last}) is not inside the run "
                f"({options.epochs} epochs)",
                hint=f"raise --epochs (default: the schedule's {self.distiller.last_epoch})",
            )

    def apply(self, run: Run) -> dict:
        """Prune `run.model` in place (and fine-tune); the specs and the manifest record follow."""
        targets = self.targets(run.model, run.specs, run.options)
        if self.config.structured:
            info = self._structured(run, targets)
            result = {k: info[k] for k in ("method", "params_before", "params_after", "channels_removed")}
        else:
            info = self._unstructured(run, targets)
            result = {k: info[k] for k in ("method", "target", "achieved", "max_deviation_weights")}
            result["layers"] = {
                n: {"before": r["before"], "target": r["target"], "achieved": r["achieved"]}
                for n, r in info["layers"].items()
            }
            result["metrics"] = {"sparsity": {"target": info["target"], "achieved": info["achieved"]}}
        run.record = {k: v for k, v in info.items() if k != "layers"}
        return result

    def params(self) -> dict:
        return as_record(self.config)

    # --- layers, targets, schedule
    def targets(self, model, specs: dict, opts: TrainOptions | None = None) -> dict[str, float | None]:
        """Per-layer targets above 0 (sparsity, or channel ratio with --structured): candidates by
        role/patterns, recipe values over the option's; a Distiller schedule's final sparsities; None
        for each layer --threshold prunes (no target). With `opts`, layers of another format that the
        run would fine-tune are refused too."""
        from mncli.compress.recipe import load_recipe, resolve_recipe, select_layers

        cfg = self.config
        trains = opts is not None and (
            opts.epochs > 0 or (cfg.method == PruneMethod.REWEIGHTED_L1 and bool(cfg.retrain_epochs))
        )
        if cfg.method == PruneMethod.THRESHOLD:
            # zeroing keeps a ternary or int layer's values on its format: refused only to fine-tune
            layers = select_layers(model, cfg.layers or None, exclude_roles=(),
                                   include_depthwise=cfg.include_depthwise)  # fmt: skip
            _refuse_other_formats(specs, set(), trains)
            return {name: None for name in layers}
        if self.distiller is not None:
            targets = self.distiller.plan(model).finals()
            _refuse_other_formats(specs, set(targets), trains)
            return targets
        if cfg.structured:  # "zero" removes the all-zero channels and ignores the ratio
            key, default = "channel_ratio", cfg.channel_ratio if cfg.criterion == Criterion.L1 else 0.5
        else:
            key, default = "sparsity", cfg.sparsity
        recipe = load_recipe(cfg.recipe, {key}) if cfg.recipe else {}
        candidates = select_layers(model, cfg.layers or None, include_depthwise=cfg.include_depthwise)
        targets = {}
        for name, settings in resolve_recipe(model, recipe, candidates).items():
            value = settings.get(key, default)
            if value is None:
                continue
            if not isinstance(value, int | float) or not 0.0 <= float(value) < 1.0:
                raise BadInput(f"{key} {value!r} for layer {name} is outside [0, 1)")
            targets[name] = float(value)
        if not any(v > 0 for v in targets.values()):
            raise BadInput(
                f"no layer gets a {key} above 0",
                hint="give --sparsity / --channel-ratio, or name layers in the recipe with a value",
            )
        _refuse_other_formats(specs, set(targets), trains)
        return {n: v for n, v in targets.items() if v > 0}

    def _final(self, targets: dict[str, float]) -> float:
        return self.config.sparsity if self.config.sparsity is not None else max(targets.values())

    def schedule(self, epochs: int, final: float, steps_per_epoch: int | None):
        """The AGP schedule with the defaults filled in, checked against the run's length."""
        from mncli.compress.prune.agp import AGPSchedule

        cfg = self.config
        if cfg.unit == Unit.EPOCHS:
            end = cfg.end if cfg.end is not None else max(cfg.start + 1, epochs // 2)
            freq = cfg.freq if cfg.freq is not None else 2
            length = epochs
        else:
            end, freq = cfg.end, cfg.freq if cfg.freq is not None else 100
            length = epochs * steps_per_epoch if steps_per_epoch else None
        schedule = AGPSchedule(
            final=final,
            initial=cfg.initial_sparsity,
            start=cfg.start,
            end=end,
            freq=freq,
            unit=cfg.unit.value,
        )
        last = schedule.start + schedule.span
        at_once = length == 0 and last == 0  # no training: one pruning step, straight to the targets
        if length is not None and last >= length and not at_once:
            raise BadInput(
                f"the AGP schedule's last pruning step ({last} {cfg.unit}) is not "
                f"inside the run ({length} {cfg.unit})",
                hint="raise --epochs or lower --end",
            )
        return schedule

    # --- the two kinds of pruning
    def _unstructured(self, run: Run, targets: dict[str, float | None]) -> dict:
        from mncli.compress.prune.masks import Masker, sparsity_of
        from mncli.compress.prune.methods import (
            run_agp,
            run_distiller,
            run_magnitude,
            run_reweighted_l1,
            run_threshold,
        )
        from mncli.compress.prune.reweighted_l1 import default_milestones

        cfg, model, epochs = self.config, run.model, run.options.epochs
        method = cfg.method.value
        modules = dict(model.named_modules())
        sparsity_before = {n: sparsity_of(modules[n].weight.detach()) for n in targets}
        masker = Masker(model, list(targets), fixed=_kept_zeros(model, run.specs))
        masker.apply()
        global_sparsity = cfg.sparsity if cfg.global_threshold else None
        log(f"pruning {len(targets)} layers with {method}" + (" (global)" if global_sparsity else ""))
        info: dict = {"method": method, "global": cfg.global_threshold}
        if self.distiller is not None:
            info.update(run_distiller(masker, self.distiller.plan(model), run.train, epochs))
        elif cfg.method == PruneMethod.THRESHOLD:
            info.update(
                run_threshold(masker, list(targets), cfg.threshold, run.train, epochs, cfg.relative_threshold)
            )
        elif cfg.method == PruneMethod.AGP:
            steps_per_epoch = (
                run.data.train.num_batches(run.options.batch_size, drop_last=True)
                if cfg.unit == Unit.STEPS
                else None
            )
            schedule = self.schedule(epochs, self._final(targets), steps_per_epoch)
            info.update(
                run_agp(masker, targets, schedule, run.train, epochs, global_sparsity=global_sparsity)
            )
            info["schedule"]["per_layer_final"] = targets
        elif cfg.method == PruneMethod.MAGNITUDE:
            info.update(run_magnitude(masker, targets, run.train, epochs, global_sparsity=global_sparsity))
        else:
            retrain = cfg.retrain_epochs if cfg.retrain_epochs is not None else epochs
            milestones = cfg.reweight_at if cfg.reweight_at is not None else default_milestones(epochs)
            lr_boost = RL1_LR_BOOST if cfg.lr_boost is None else cfg.lr_boost
            info.update(
                run_reweighted_l1(
                    model, masker, targets, run.train, epochs, retrain,
                    lam=RL1_LAMBDA if cfg.rl1_lambda is None else cfg.rl1_lambda,
                    eps=RL1_EPS if cfg.rl1_eps is None else cfg.rl1_eps, milestones=milestones,
                    lr_boost=lr_boost,
                )
            )  # fmt: skip
            info["schedule"] = {
                "regularise_epochs": epochs,
                "retrain_epochs": retrain,
                "milestones": milestones,
                "lr_boost": lr_boost,
            }
        masker.apply()
        report = masker.report()
        for name, row in report.items():
            row["before"] = round(sparsity_before.get(name, row["achieved"]), 6)
            spec = run.specs.setdefault(name, {})
            spec["mask"] = True
            spec.setdefault("method", method)
            spec["prune_method"] = method
            if row["target"] is not None:
                spec["target_sparsity"] = round(row["target"], 6)
            if cfg.method == PruneMethod.THRESHOLD and name in targets:
                spec["threshold"] = cfg.threshold
                spec["threshold_of"] = "max|w|" if cfg.relative_threshold else "absolute"
            spec["sparsity"] = round(row["achieved"], 6)
        target, achieved = masker.overall()
        info["layers"] = report
        info["target"], info["achieved"] = round(target, 6), round(achieved, 6)
        info["max_deviation_weights"] = masker.max_deviation()
        return info

    def _structured(self, run: Run, ratios: dict[str, float]) -> dict:
        from mncli.compress.prune.callbacks import MaskCallback
        from mncli.compress.prune.channels import prune_channels
        from mncli.compress.prune.masks import Masker
        from mncli.models import input_shape

        model, specs, arch = run.model, run.specs, run.arch
        params_before = sum(p.numel() for p in model.parameters())
        device = next(model.parameters()).device
        model.cpu()
        report = prune_channels(
            model, input_shape(arch), ratios=ratios, criterion=self.config.criterion.value
        )
        model.to(device)
        arch["shapes"] = {**arch.get("shapes", {}), **report["shapes"]}
        model.arch = copy.deepcopy(arch)
        params_after = sum(p.numel() for p in model.parameters())
        removed = sum(g["channels"] - g["kept"] for g in report["groups"])
        log(f"removed {removed} channels: {params_before:,} -> {params_after:,} parameters")
        masker = Masker(model, [], fixed=_kept_zeros(model, specs))  # earlier masks survive the fine-tuning
        callback = MaskCallback(masker, log=log)
        try:
            if run.options.epochs > 0:
                run.train([callback], phase="finetune")
                masker.apply()
        finally:
            callback.close()
        for name in report["shapes"]:
            if name in specs and specs[name].get("mask"):
                specs[name]["sparsity"] = masker.report().get(name, {}).get("achieved")
        return {
            "method": "structured",
            "criterion": self.config.criterion.value,
            "groups": report["groups"],
            "shapes": report["shapes"],
            "params_before": params_before,
            "params_after": params_after,
            "channels_removed": removed,
        }


def run(input: Path, out: Path, config: PruneConfig, train: TrainOptions) -> dict:
    """The file stage: prune INPUT to OUT (dataset: the input's unless `train` names one)."""
    return run_stage(Pruning(config), input, out, train)


__all__ = ["Criterion", "Pruning", "PruneConfig", "PruneMethod", "Unit", "run"]
