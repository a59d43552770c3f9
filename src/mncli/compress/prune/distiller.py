"""Distiller's compression-schedule YAML, read as Distiller reads it, and run on the engine's hooks.

A Distiller schedule (e.g. the MicroNet entry's `imagenet_efficientnet/schedules/pruning2.yaml`) is
recognised by its `version` and `pruners` keys:

    version: 1
    pruners:
      low_pruner:
        class: AutomatedGradualPruner
        initial_sparsity: 0.05
        final_sparsity: 0.25
        weights: ["module._blocks.0._depthwise_conv.weight", ...]
    lr_schedulers:
      pruning_lr: {class: ExponentialLR, gamma: 0.9}
    policies:
      - pruner: {instance_name: low_pruner}
        starting_epoch: 0
        ending_epoch: 20
        frequency: 2
      - lr_scheduler: {instance_name: pruning_lr}
        starting_epoch: 20
        ending_epoch: 40
        frequency: 1

What each part means follows Distiller's own code (NervanaSystems/distiller, as of its torch 1.1
integration, which the MicroNet fork used):
- config.py `dict_config` / `add_policy_to_scheduler`, scheduler.py `CompressionScheduler.add_policy`:
  a policy acts at the epochs `range(starting_epoch, ending_epoch, frequency)`; LR policies are added
  after all the others, in file order.
- policy.py `PruningPolicy.on_epoch_begin`: a pruner sets its masks at the start of each of its epochs;
  scheduler.py `on_minibatch_end` re-applies every mask after each optimiser step, also after the
  policy's last epoch (here: `MaskCallback`).
- pruning/automated_gradual_pruner.py `compute_target_sparsity`: the target at epoch t is
  s_f + (s_i - s_f) * (1 - (t - start) / span)^3 with span = ((end - start - 1) // freq) * freq, which
  `AGPSchedule` computes; Distiller asserts final > initial and span > 0, refused here as BadInput.
  Masks are mncli's exact-count magnitude masks (`Masker.prune_to`): Distiller's level pruner zeroes
  the int(s * numel) smallest |w| and every weight tied with the last of them.
- policy.py `LRPolicy.on_epoch_end`: `lr_scheduler.step(epoch=current_epoch + 1)` at the end of each
  of its epochs. Given an epoch, torch's schedulers set the closed form for it: ExponentialLR
  base * gamma^e, StepLR base * gamma^(e // step_size), MultiStepLR base * gamma^(milestones <= e).
  So ExponentialLR over epochs 20-40 keeps the base LR up to epoch 20 and trains epoch e = 21..40 at
  base * gamma^e (not gamma^(e - 20)); after its last epoch the LR stays where it was.

Weight names lose DataParallel's `module.` prefix; a name that is not one of the model's conv/linear
weights is renamed through the published layouts that rename key by key (lukemelas'
efficientnet_pytorch: `_blocks.N._expand_conv.weight` -> `blocks.N.expand.weight`), and one that
still names no layer is a BadInput naming it. Anything Distiller knows but this reader does not run
(other pruner classes, regularizers, quantizers, policy `args`, ...) is refused by name.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from mncli.artifact.hashing import file_sha256
from mncli.compress.prune.agp import AGPSchedule
from mncli.compress.prune.callbacks import MaskCallback
from mncli.compress.prune.masks import Masker
from mncli.compress.recipe import compute_layers, layer_hint, parse_recipe_text, read_recipe_text
from mncli.errors import BadInput
from mncli.text import shown

FORMAT = "distiller"
VERSIONS = (1,)
TOP_KEYS = ("version", "pruners", "lr_schedulers", "policies")
NOT_RUN_SECTIONS = ("regularizers", "quantizers", "extensions")
POLICY_KINDS = ("pruner", "lr_scheduler")
NOT_RUN_POLICIES = ("regularizer", "quantizer", "extension")
WINDOW_KEYS = ("starting_epoch", "ending_epoch", "frequency")
# Each class's arguments as Distiller's build_component checks them (all required here).
PRUNER_ARGS = {"AutomatedGradualPruner": ("initial_sparsity", "final_sparsity", "weights")}
LR_ARGS = {
    "ExponentialLR": ("gamma",),
    "StepLR": ("step_size", "gamma"),
    "MultiStepLR": ("milestones", "gamma"),
}
DP_PREFIX = "module."  # torch.nn.DataParallel's prefix on every parameter name


def _foreign_renames() -> tuple[tuple[str, Callable[[str], str | None]], ...]:
    """(layout, rename key) of the published layouts whose renaming goes key by key."""
    from mncli.models.layouts import efficientnet_pytorch

    return ((efficientnet_pytorch.LAYOUT, efficientnet_pytorch._rename),)


@dataclass(frozen=True)
class Window:
    """A policy's epochs: `range(starting_epoch, ending_epoch, frequency)`, as Distiller's add_policy."""

    start: int
    end: int
    freq: int

    def epochs(self) -> range:
        return range(self.start, self.end, self.freq)

    def as_dict(self) -> dict:
        return {"starting_epoch": self.start, "ending_epoch": self.end, "frequency": self.freq}


@dataclass(frozen=True)
class PrunerPolicy:
    """An AutomatedGradualPruner with the window of its policy."""

    name: str
    initial: float
    final: float
    weights: tuple[str, ...]
    window: Window

    @property
    def schedule(self) -> AGPSchedule:
        w = self.window
        return AGPSchedule(final=self.final, initial=self.initial, start=w.start, end=w.end, freq=w.freq)

    def as_dict(self) -> dict:
        schedule = self.schedule
        return {
            "class": "AutomatedGradualPruner",
            "initial_sparsity": self.initial,
            "final_sparsity": self.final,
            **self.window.as_dict(),
            "span": schedule.span,
            "steps": schedule.table(),
            "weights": list(self.weights),
        }


@dataclass(frozen=True)
class LRPolicy:
    """A torch LR scheduler stepped by Distiller's LRPolicy over its window."""

    name: str
    kind: str  # ExponentialLR, StepLR or MultiStepLR
    gamma: float
    window: Window
    step_size: int | None = None
    milestones: tuple[int, ...] = ()

    def factor(self, epoch: int) -> float:
        """The scheduler's closed form after `step(epoch=epoch)`: the LR over the base LR."""
        if self.kind == "ExponentialLR":
            return self.gamma**epoch
        if self.kind == "StepLR":
            return self.gamma ** (epoch // self.step_size)
        return self.gamma ** bisect_right(self.milestones, epoch)

    def as_dict(self) -> dict:
        extra = {"step_size": self.step_size} if self.kind == "StepLR" else {}
        if self.kind == "MultiStepLR":
            extra = {"milestones": list(self.milestones)}
        return {"name": self.name, "class": self.kind, "gamma": self.gamma, **extra, **self.window.as_dict()}


@dataclass(frozen=True)
class DistillerSchedule:
    """A Distiller schedule file, checked: its pruner policies and LR policies in file order."""

    path: Path
    sha256: str
    version: int
    pruners: tuple[PrunerPolicy, ...]
    lr_policies: tuple[LRPolicy, ...]

    @property
    def last_epoch(self) -> int:
        """The last ending_epoch of any policy: the run's length by default."""
        return max(p.window.end for p in (*self.pruners, *self.lr_policies))

    def lr_factor(self, epoch: int) -> float:
        """The LR during `epoch` (0-based) over the base LR: at the end of every epoch k < epoch, each
        LR policy acting at k sets its scheduler's closed form for k + 1 (the last one set wins)."""
        factor = 1.0
        for k in range(epoch):
            for policy in self.lr_policies:
                if k in policy.window.epochs():
                    factor = policy.factor(k + 1)
        return factor

    def plan(self, model: nn.Module) -> DistillerPlan:
        """Every pruner's weights as the model's layers (BadInput for a name that is none of them)."""
        names = compute_layers(model)
        known = set(names)
        layers: dict[str, PrunerPolicy] = {}
        sources: dict[str, dict] = {}
        for pruner in self.pruners:
            for weight in pruner.weights:
                layer, layout = self._layer_of(weight, pruner.name, known, names)
                if layer in layers:
                    raise BadInput(
                        f"schedule {self.path}: {weight!r} of pruner {pruner.name!r} is layer {layer}, "
                        f"which pruner {layers[layer].name!r} prunes too",
                        hint="name each weight in one pruner",
                    )
                layers[layer] = pruner
                sources[layer] = {"weight": weight, "layout": layout}
        return DistillerPlan(self, {n: layers[n] for n in names if n in layers}, sources)

    def _layer_of(
        self, weight: str, pruner: str, known: set[str], names: list[str]
    ) -> tuple[str, str | None]:
        name = weight[len(DP_PREFIX) :] if weight.startswith(DP_PREFIX) else weight
        if name.endswith(".weight") and name[: -len(".weight")] in known:
            return name[: -len(".weight")], None
        for layout, rename in _foreign_renames():
            ours = rename(name)
            if ours is not None and ours.endswith(".weight") and ours[: -len(".weight")] in known:
                return ours[: -len(".weight")], layout
        raise BadInput(
            f"schedule {self.path}: weight {weight!r} of pruner {pruner!r} is not the weight of a conv or "
            "linear layer of the model",
            hint=layer_hint(names),
        )

    def record(self, epochs: int) -> dict:
        """The file as the manifest records it: source, pruners, LR policies, the LR factor per epoch."""
        return {
            "format": FORMAT,
            "path": str(self.path),
            "sha256": self.sha256,
            "version": self.version,
            "pruners": {p.name: p.as_dict() for p in self.pruners},
            "lr_policies": [p.as_dict() for p in self.lr_policies],
            "lr_factors": [self.lr_factor(e) for e in range(epochs)],
        }


@dataclass(frozen=True)
class DistillerPlan:
    """A schedule on one model: our layer -> its pruner policy, and the name each came from."""

    schedule: DistillerSchedule
    layers: dict[str, PrunerPolicy]
    sources: dict[str, dict]

    def finals(self) -> dict[str, float]:
        return {name: pruner.final for name, pruner in self.layers.items()}

    @property
    def last_pruning_epoch(self) -> int:
        return max(p.window.start + p.schedule.span for p in self.schedule.pruners)

    def prunes_at(self, epoch: int) -> bool:
        return any(p.schedule.is_step(epoch) for p in self.schedule.pruners)

    def targets_at(self, epoch: int) -> dict[str, float]:
        """The AGP target of every layer whose pruner acts at `epoch`."""
        return {
            name: pruner.schedule.target(epoch)
            for name, pruner in self.layers.items()
            if pruner.schedule.is_step(epoch)
        }

    def lr_factor(self, epoch: int) -> float:
        return self.schedule.lr_factor(epoch)

    def record(self, epochs: int) -> dict:
        """The schedule's record plus every layer's source name, pruner, targets and window."""
        layers = {
            name: {
                **self.sources[name],
                "pruner": pruner.name,
                "initial_sparsity": pruner.initial,
                "final_sparsity": pruner.final,
                **pruner.window.as_dict(),
            }
            for name, pruner in self.layers.items()
        }
        return {**self.schedule.record(epochs), "layers": layers}


class DistillerCallback(MaskCallback):
    """Distiller's CompressionScheduler on the engine's hooks: at the first step of an epoch every
    pruner acting then prunes its layers to their AGP targets; every step's LR is multiplied by the
    LR policies' factor for the epoch; the masks are kept as MaskCallback keeps them. `steps` holds
    each pruning epoch's achieved per-layer sparsity."""

    def __init__(self, masker: Masker, plan: DistillerPlan, *, log: Callable[[str], None] | None = None):
        super().__init__(masker, log=log)
        self.plan = plan
        self.steps: list[dict] = []

    def before_step(self, ctx) -> None:
        epoch = int(getattr(ctx, "epoch", 0))
        if epoch != self.last_pruned and self.plan.prunes_at(epoch):
            self.prune_at(epoch)
        factor = self.plan.lr_factor(epoch)
        if factor != 1.0:  # the engine has just set lr = base_lr * its own factor for this step
            for group in ctx.optimizer.param_groups:
                group["lr"] *= factor
            ctx.lr_scale *= factor
        self.masker.apply()

    @property
    def schedule_done(self) -> bool:
        return self.last_pruned is not None and self.last_pruned >= self.plan.last_pruning_epoch

    def prune_at(self, t: int) -> None:
        self.last_pruned = t
        targets = self.plan.targets_at(t)
        self.masker.prune_to(targets)
        achieved = self.masker.achieved()
        self.steps.append({"epoch": t, "layers": {name: round(achieved[name], 6) for name in targets}})

    def state_dict(self) -> dict:
        return {**super().state_dict(), "steps": list(self.steps)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.steps = list(state.get("steps", []))


# --- reading the file


def read_schedule(path: Path) -> DistillerSchedule | None:
    """The Distiller schedule in `path`, checked; None when the file is a plain recipe (no `version`
    and `pruners`). Read with the recipe reader, so a file that is no YAML is the same BadInput."""
    path = Path(path)
    data = parse_recipe_text(path, read_recipe_text(path))
    if not isinstance(data, dict) or not set(data) & set(TOP_KEYS):
        return None
    where = f"schedule {path}"
    if "version" not in data or "pruners" not in data:
        missing = "version" if "version" not in data else "pruners"
        raise BadInput(
            f"{where} looks like a Distiller schedule but has no `{missing}`",
            hint="a Distiller schedule has `version: 1`, `pruners:` and `policies:`",
        )
    for key in data:
        if key in NOT_RUN_SECTIONS:
            raise BadInput(f"{where}: `{key}` are not run by mncli prune", hint=f"remove `{key}`")
        if key not in TOP_KEYS:
            raise BadInput(f"{where}: unknown key {key!r}", hint=f"known: {', '.join(TOP_KEYS)}")
    version = data["version"]
    if isinstance(version, bool) or version not in VERSIONS:
        raise BadInput(f"{where}: version {version!r} is not a Distiller schedule version", hint="version: 1")
    pruners = _mapping(data["pruners"], f"{where}: pruners", nonempty=True)
    schedulers = _mapping(data.get("lr_schedulers") or {}, f"{where}: lr_schedulers")
    if "policies" not in data:
        raise BadInput(f"{where} has no `policies`", hint="each pruner needs a policy with its epochs")
    policies = data["policies"]
    if not isinstance(policies, list) or not policies:
        raise BadInput(f"{where}: policies must be a list of policies, got {shown(policies)}")
    windows = _windows(where, policies, pruners, schedulers)
    pruner_policies, seen_weights = [], {}
    for name, spec in pruners.items():
        pruner = _pruner(where, name, spec, windows[("pruner", name)])
        for weight in pruner.weights:
            if weight in seen_weights:
                raise BadInput(f"{where}: {weight!r} is in pruners {seen_weights[weight]!r} and {name!r}")
            seen_weights[weight] = name
        pruner_policies.append(pruner)
    lr_policies = [
        _lr_policy(where, name, schedulers[name], window)
        for (kind, name), window in windows.items()
        if kind == "lr_scheduler"
    ]
    return DistillerSchedule(
        path=path,
        sha256=file_sha256(path),
        version=int(version),
        pruners=tuple(pruner_policies),
        lr_policies=tuple(lr_policies),
    )


def _windows(where: str, policies: list, pruners: dict, schedulers: dict) -> dict[tuple[str, str], Window]:
    """(kind, instance name) -> its window, in file order; each pruner and scheduler in one policy."""
    windows: dict[tuple[str, str], Window] = {}
    for index, policy in enumerate(policies):
        at = f"{where}: policy {index + 1}"
        policy = _mapping(policy, at)
        for key in policy:
            if key in NOT_RUN_POLICIES:
                raise BadInput(f"{at} is a {key} policy: not run by mncli prune", hint="remove it")
            if key == "epochs":
                raise BadInput(
                    f"{at}: an `epochs` list is not supported",
                    hint="give starting_epoch, ending_epoch, frequency",
                )
            if key not in (*POLICY_KINDS, *WINDOW_KEYS):
                raise BadInput(
                    f"{at}: unknown key {key!r}", hint=f"known: {', '.join(POLICY_KINDS + WINDOW_KEYS)}"
                )
        kinds = [k for k in POLICY_KINDS if k in policy]
        if len(kinds) != 1:
            raise BadInput(
                f"{at} must name one pruner or one lr_scheduler", hint="e.g. pruner: {instance_name: p1}"
            )
        kind = kinds[0]
        ref = _mapping(policy[kind], f"{at}: {kind}")
        for key in ref:
            if key != "instance_name":
                raise BadInput(f"{at}: {kind} key {key!r} is not supported", hint="only instance_name")
        name = ref.get("instance_name")
        defined = pruners if kind == "pruner" else schedulers
        if not isinstance(name, str) or name not in defined:
            section = "pruners" if kind == "pruner" else "lr_schedulers"
            raise BadInput(f"{at}: {kind} {shown(name)} is not defined in {section}")
        if (kind, name) in windows:
            raise BadInput(f"{at}: {kind} {name!r} is in two policies", hint="give each one policy")
        values = []
        for key in WINDOW_KEYS:
            if key not in policy:
                raise BadInput(f"{at} has no {key}", hint="give starting_epoch, ending_epoch and frequency")
            values.append(_integer(policy[key], f"{at}: {key}"))
        start, end, freq = values
        if start < 0 or end <= start or freq < 1:
            raise BadInput(
                f"{at}: epochs {start} to {end} every {freq} is empty",
                hint="0 <= starting_epoch < ending_epoch and frequency >= 1",
            )
        windows[(kind, name)] = Window(start, end, freq)
    for kind, defined in (("pruner", pruners), ("lr_scheduler", schedulers)):
        for name in defined:
            if (kind, name) not in windows:
                raise BadInput(
                    f"{where}: {kind} {name!r} has no policy", hint="add a policy for it, or remove it"
                )
    return windows


def _pruner(where: str, name: str, spec: object, window: Window) -> PrunerPolicy:
    at = f"{where}: pruner {name!r}"
    spec = _arguments(at, spec, PRUNER_ARGS, "pruners")
    initial = _fraction(spec["initial_sparsity"], f"{at}: initial_sparsity")
    final = _fraction(spec["final_sparsity"], f"{at}: final_sparsity")
    if not initial < final:
        raise BadInput(
            f"{at}: initial_sparsity {initial} is not below final_sparsity {final}",
            hint="AGP rises from the initial to the final sparsity",
        )
    weights = spec["weights"]
    if not isinstance(weights, list) or not weights or not all(isinstance(w, str) and w for w in weights):
        raise BadInput(f"{at}: weights must be a list of parameter names, got {shown(weights)}")
    if len(set(weights)) != len(weights):
        raise BadInput(f"{at} names a weight twice")
    span = ((window.end - window.start - 1) // window.freq) * window.freq
    if span <= 0:
        raise BadInput(
            f"{at}: its policy's epochs {window.start} to {window.end} every {window.freq} give AGP one "
            "step (Distiller needs ending_epoch - starting_epoch > frequency)",
            hint="widen the policy's epochs or lower its frequency",
        )
    return PrunerPolicy(name, initial, final, tuple(weights), window)


def _lr_policy(where: str, name: str, spec: object, window: Window) -> LRPolicy:
    at = f"{where}: lr_scheduler {name!r}"
    spec = _arguments(at, spec, LR_ARGS, "lr_schedulers")
    gamma = _number(spec["gamma"], f"{at}: gamma")
    if gamma <= 0:
        raise BadInput(f"{at}: gamma must be positive, got {gamma}")
    kind = spec["class"]
    step_size, milestones = None, ()
    if kind == "StepLR":
        step_size = _integer(spec["step_size"], f"{at}: step_size")
        if step_size < 1:
            raise BadInput(f"{at}: step_size must be at least 1, got {step_size}")
    if kind == "MultiStepLR":
        raw = spec["milestones"]
        if not isinstance(raw, list) or not raw:
            raise BadInput(f"{at}: milestones must be a list of epochs, got {shown(raw)}")
        milestones = tuple(_integer(m, f"{at}: milestones") for m in raw)
        if list(milestones) != sorted(set(milestones)):
            raise BadInput(f"{at}: milestones must increase, got {list(milestones)}")
    return LRPolicy(name, kind, gamma, window, step_size, milestones)


def _arguments(at: str, spec: object, classes: dict[str, tuple[str, ...]], section: str) -> dict:
    """A component's mapping with a known `class` and exactly that class's arguments."""
    spec = _mapping(spec, at)
    kind = spec.get("class")
    if kind not in classes:
        raise BadInput(
            f"{at}: class {shown(kind)} is not supported in {section}",
            hint=f"supported: {', '.join(classes)}",
        )
    arguments = classes[kind]
    for key in spec:
        if key != "class" and key not in arguments:
            raise BadInput(f"{at}: {kind} does not take {key!r}", hint=f"it takes {', '.join(arguments)}")
    for key in arguments:
        if key not in spec:
            raise BadInput(f"{at}: {kind} needs {key}")
    return spec


def _mapping(value: object, at: str, *, nonempty: bool = False) -> dict:
    if not isinstance(value, dict) or (nonempty and not value):
        raise BadInput(f"{at} must be a{' non-empty' if nonempty else ''} mapping, got {shown(value)}")
    return value


def _integer(value: object, at: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(f"{at} must be an integer number of epochs, got {shown(value)}")
    return value


def _number(value: object, at: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadInput(f"{at} must be a number, got {shown(value)}")
    return float(value)


def _fraction(value: object, at: str) -> float:
    number = _number(value, at)
    if not 0.0 <= number < 1.0:
        raise BadInput(f"{at} {number} is outside [0, 1)")
    return number
