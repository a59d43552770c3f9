"""The `search` stage: ProxylessNAS on a dataset, writing the derived network as an architecture-only
artifact (an `mbconv` arch that `mncli train ARCH.safetensors` trains from scratch).

The weights train with the training options (`TrainOptions`, defaults `TRAIN_DEFAULTS`): first
`weights_warmup_epochs` on random paths, then `epochs` of search with architecture steps in between.

    result = run(Path("arch.safetensors"), SearchConfig(target_ops=5e6), TrainOptions(dataset="mnist"))

Under torchrun every rank searches in lock-step (the same sampled paths; weight gradients reduced by
the engine's DDP, architecture gradients by an all-reduce of the alphas' gradients, see
mncli.search.proxyless); rank 0 alone logs, writes OUT and returns the result, the other ranks
return {"rank": r}.
"""

from __future__ import annotations

import enum
import math
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

from mncli.errors import BadInput
from mncli.log import log
from mncli.stages.training import (
    TrainOptions,
    as_record,
    check_writable,
    loading_line,
    remove_checkpoints,
    run_training,
)
from mncli.text import parse_choice

# The weight training of a search (ProxylessNAS's recipe; `epochs` are those after the warm-up).
TRAIN_DEFAULTS = dict(
    epochs=6, batch_size=128, lr=0.05, optimizer="sgd", weight_decay=4e-5, label_smoothing=0.1,
    schedule="cosine",
)  # fmt: skip


class Cost(enum.StrEnum):
    """The MicroNet metric the search optimises."""

    OPS = "ops"
    PARAMS = "params"
    SCORE = "score"


class CostLoss(enum.StrEnum):
    """ProxylessNAS's cost-aware losses (mncli.search.cost.cost_loss)."""

    MUL_LOG = "mul#log"
    ADD_LINEAR = "add#linear"


class BinaryMode(enum.StrEnum):
    """Gate gradients of all paths (full) or of two sampled paths (two)."""

    FULL = "full"
    TWO = "two"


class SpaceName(enum.StrEnum):
    """The named search spaces (mncli.search.space.NAMED_SPACES)."""

    MIT_CIFAR100 = "mit-cifar100"


class Activation(enum.StrEnum):
    """The activations the zoo's `mbconv` builds (mncli.models.blocks.ACTIVATIONS)."""

    RELU6 = "relu6"
    RELU = "relu"
    HSWISH = "hswish"
    HARDSWISH = "hardswish"
    SWISH = "swish"
    SILU = "silu"
    TANH = "tanh"


@dataclass
class SearchConfig:
    """The search's own options: the space, the cost, the architecture optimiser."""

    # the space: a named one or (None) the dataset's default (mncli.search.space), then these
    # options where given
    space: SpaceName | None = None
    widths: list[int] | None = None
    repeats: list[int] | None = None
    strides: list[int] | None = None
    ops: list[str] | None = None
    stem_channels: int | None = None
    stem_stride: int | None = None
    head_channels: int | None = None
    se_ratio: float = 0.0
    act: Activation = Activation.RELU6
    # the cost
    cost: Cost | None = None  # default: the metric of the target given, else ops
    target_ops: float | None = None
    target_params: float | None = None
    target_score: float | None = None
    cost_loss: CostLoss = CostLoss.MUL_LOG
    fit_target: bool = True
    shared_weights: bool = False  # candidates cut from one set of weights (ours; supernet.py)
    # the architecture optimiser
    binary_mode: BinaryMode = BinaryMode.FULL
    arch_lr: float = 1e-3
    arch_every: int = 5
    arch_steps: int = 1
    weights_warmup_epochs: int = 2  # weight steps only, on random paths, before the search epochs

    def validate(self) -> SearchConfig:
        """BadInput for anything wrong that needs no data (choices, targets, ops, ranges)."""
        from mncli.search.space import check_ops

        self.act = parse_choice(Activation, self.act, "--act")
        self.cost_loss = parse_choice(CostLoss, self.cost_loss, "--cost-loss")
        self.binary_mode = parse_choice(BinaryMode, self.binary_mode, "--binary-mode")
        if self.space is not None:
            self.space = parse_choice(SpaceName, self.space, "--space")
        if self.cost is not None:
            self.cost = parse_choice(Cost, self.cost, "--cost")
        self.metric_and_target()
        if self.ops:
            self.ops = check_ops(self.ops)
        if not 0.0 <= self.se_ratio <= 1.0:
            raise BadInput(
                f"--se-ratio must be in [0, 1], got {self.se_ratio:g}", hint="e.g. --se-ratio 0.25"
            )
        if self.weights_warmup_epochs < 0:
            raise BadInput(f"--weights-warmup-epochs must be >= 0, got {self.weights_warmup_epochs}")
        if self.arch_every < 1 or self.arch_steps < 1:
            raise BadInput("--arch-every and --arch-steps must be at least 1")
        if not self.arch_lr > 0:
            raise BadInput(f"--arch-lr must be positive, got {self.arch_lr}")
        return self

    def metric_and_target(self) -> tuple[str, float | None]:
        """The cost metric and its target (None: none given)."""
        given = {
            m: v
            for m, v in (
                ("ops", self.target_ops),
                ("params", self.target_params),
                ("score", self.target_score),
            )
            if v is not None
        }
        if len(given) > 1:
            raise BadInput(
                f"give one cost target, got {', '.join('--target-' + m for m in given)}",
                hint="the search optimises one cost: --target-ops, --target-params or --target-score",
            )
        metric = str(self.cost) if self.cost is not None else next(iter(given), "ops")
        if given and metric not in given:
            raise BadInput(
                f"--cost {metric} needs --target-{metric}, got --target-{next(iter(given))}",
                hint=f"drop --cost, or give --target-{metric}",
            )
        return metric, given.get(metric)

    def params(self) -> dict:
        """The search's options as the manifest records them beside params["train"]."""
        return as_record(self)


def build_space(cfg: SearchConfig, in_channels: int, input_size: int, num_classes: int):
    from mncli.search.space import DEFAULT_OPS, SearchSpace, default_space, named_space

    if cfg.space is not None:
        base = named_space(cfg.space)
    else:
        base = default_space(in_channels, input_size, num_classes)
    for key in ("widths", "repeats", "strides", "stem_channels", "stem_stride", "head_channels"):
        value = getattr(cfg, key)
        if value is not None:
            base[key] = list(value) if isinstance(value, list | tuple) else value
    n = len(base["widths"])
    for key in ("repeats", "strides"):  # a space given by widths alone reuses the default pattern
        if getattr(cfg, key) is None and len(base[key]) != n:
            base[key] = (base[key] + [base[key][-1]] * n)[:n]
    return SearchSpace(
        in_channels=in_channels,
        input_size=input_size,
        num_classes=num_classes,
        ops=list(cfg.ops) if cfg.ops else list(DEFAULT_OPS),
        se_ratio=cfg.se_ratio,
        act=str(cfg.act),
        **base,
    )


def weak_cost_note(cost_loss: str, argmax_cost: float, target: float) -> str | None:
    """A hint when the argmax network ended far over the target under mul#log: for raw op or parameter
    counts log(E)/log(target) barely moves (twice the target scales the loss by ~1.015), so the
    probabilities follow accuracy alone and the fit to the target picks the network (measured on
    Fashion-MNIST, README)."""
    if cost_loss == CostLoss.MUL_LOG and argmax_cost > 1.5 * target:
        return (
            "the cost term hardly constrained this search (mul#log is weak for raw counts); "
            "--cost-loss add#linear makes the probabilities themselves respect the target"
        )
    return None


def undecided_note(probabilities: list[dict[str, float]]) -> str | None:
    """A hint when the search ended close to uniform: the median block's most likely op under twice the
    uniform probability (Fashion-MNIST, 1 + 3 epochs: 1.6x with mul#log, 2.1-2.4x with the README's
    recipe; 3.1x after 2 + 8 epochs): the derived network is then close to an arbitrary pick, or
    the fit to the target's."""
    ratios = [max(p.values()) * len(p) for p in probabilities if len(p) > 1]
    if not ratios:
        return None
    median = statistics.median(ratios)
    if median >= 2.0:
        return None
    return (
        f"the search has not decided: the most likely op per block is at a median {median:.1f}x the "
        "uniform probability, so the derived network says little about which ops are better; more "
        "--epochs or a higher --arch-lr (0.01 in the README's recipe) let the search decide"
    )


def run(out: Path, config: SearchConfig, train: TrainOptions) -> dict:
    """Search a network on `train.dataset` and write it to OUT (architecture only); the result."""
    import torch

    from mncli.data import scoring_task
    from mncli.engine.runtime import distributed_env
    from mncli.search.callback import make_callback
    from mncli.search.cost import CostModel, check_target, fmt
    from mncli.search.derive import derive, shared_weight_accuracy
    from mncli.search.proxyless import ArchConfig, ArchitectureSearch
    from mncli.search.supernet import SuperNet

    started = time.time()
    cfg = config.validate()
    check_writable(out, train)
    opts = train.resolved(**TRAIN_DEFAULTS).with_fallbacks()
    if opts.dataset is None:
        raise BadInput("no dataset given", hint="add --dataset fashion-mnist (or another)")
    if opts.epochs < 1:
        raise BadInput(f"--epochs (search epochs after the warm-up) must be >= 1, got {opts.epochs}")
    total = cfg.weights_warmup_epochs + opts.epochs
    replace(opts, epochs=total).validate()  # the engine runs warm-up and search epochs as one
    metric, target = cfg.metric_and_target()
    rank, _, world = distributed_env()
    say = log if rank == 0 else _quiet
    torch.manual_seed(opts.seed)
    data = opts.load_data()
    space = build_space(cfg, data.in_channels, data.image_size, data.num_classes)
    task = scoring_task(opts.dataset)
    supernet = SuperNet(space, seed=opts.seed, shared=cfg.shared_weights)
    costs = CostModel(supernet, metric, task)
    low, high = costs.minimum(), costs.maximum()
    if target is None:
        target = math.sqrt(low * high)
        say(f"no target given: aiming at {fmt(target, metric)} {metric}, the middle of this space")
    check_target(costs, target)
    say(loading_line(data))
    say(
        f"search space: {len(supernet.mixed)} choice blocks, {metric} from {fmt(low, metric)} to "
        f"{fmt(high, metric)}; target {fmt(target, metric)}"
    )
    if target > high:
        say(f"the target is above the largest network of the space ({fmt(high, metric)}): nothing to trade")
    arch_cfg = ArchConfig(
        binary_mode=str(cfg.binary_mode), arch_lr=cfg.arch_lr, update_every=cfg.arch_every,
        arch_steps=cfg.arch_steps, weights_warmup_epochs=cfg.weights_warmup_epochs,
        loss=str(cfg.cost_loss), target=target,
    )  # fmt: skip
    search = ArchitectureSearch(supernet, costs, arch_cfg, seed=opts.seed)
    callback = make_callback(search, cfg.weights_warmup_epochs, metric)
    fitted = run_training(
        supernet, opts, data, out=out, callbacks=[callback], phase="search", keep_best=False, epochs=total
    )
    # every rank derives the same network (identical alphas) and evaluates its share of val
    result = derive(supernet, costs, target, cfg.fit_target)
    device = next(supernet.parameters()).device
    shared_acc = shared_weight_accuracy(
        supernet, data, result["indices"], device, opts.seed, rank=rank, world_size=world
    )
    saved = {"rank": rank}
    if rank == 0:
        saved = _save(out, cfg, opts, supernet, costs, data, callback.history, target, task, fitted, started,
                      result, shared_acc)  # fmt: skip
    from mncli.engine.distributed import leave_group

    leave_group()
    return saved


def _quiet(message: str) -> None:
    """The log of ranks other than 0 under torchrun: nothing (rank 0 logs for all)."""


def _save(out, cfg, opts, supernet, costs, data, history, target, task, fitted, started, result,
          shared_acc) -> dict:  # fmt: skip
    from mncli.bundle import Bundle, arch_score, save_bundle
    from mncli.search.cost import fmt

    metric = costs.metric
    if result["fitted_blocks"]:
        log(
            f"argmax network: {fmt(result['argmax_cost'], metric)} {metric}; moved blocks "
            f"{result['fitted_blocks']}: the most probable network within [0.8, 1] x target"
        )
        note = weak_cost_note(cfg.cost_loss, result["argmax_cost"], target)
        if note:
            log(note)
    note = undecided_note([block["probabilities"] for block in result["blocks"]])
    if note:
        log(note)
    arch = result["arch"]
    score = arch_score(arch, opts.dataset)
    derived = result["derived_cost"]
    within = abs(derived - target) / target
    if within > 0.2:
        log(
            f"warning: the derived network's {metric} ({fmt(derived, metric)}) is {100 * within:.0f} % "
            f"from the target ({fmt(target, metric)})"
        )
    search_record = {
        "space": supernet.space.to_dict(),
        "cost": metric,
        "task": task,
        "target": target,
        "cost_loss": str(cfg.cost_loss),
        "fit_target": cfg.fit_target,
        "binary_mode": str(cfg.binary_mode),
        "cost_range": [costs.minimum(), costs.maximum()],
        "expected_cost": result["expected_cost"],
        "argmax_cost": result["argmax_cost"],
        "derived_cost": derived,
        "derived_vs_target": derived / target,
        "fitted_blocks": result["fitted_blocks"],
        "blocks": result["blocks"],
        "history": history,
    }
    elapsed = time.time() - started
    metrics = {
        "score": score,
        "val_acc_shared_weights": shared_acc,
        "search_epochs": opts.epochs,
        "weights_warmup_epochs": cfg.weights_warmup_epochs,
        "wall_time_s": round(elapsed, 1),
    }
    if getattr(fitted, "history", None):
        metrics["history"] = fitted.history
    manifest = save_bundle(
        Bundle(model=None, arch=arch), out, stage="search", params={"train": opts.params(), **cfg.params()},
        metrics=metrics, data=data.info, seed=opts.seed, weights=False, extra={"search": search_record},
    )  # fmt: skip
    remove_checkpoints(out)
    return {
        "output": str(out),
        "arch": arch,
        "blocks": result["blocks"],
        "cost": metric,
        "target": target,
        "expected_cost": result["expected_cost"],
        "argmax_cost": result["argmax_cost"],
        "derived_cost": derived,
        "score": score,
        "val_acc_shared_weights": shared_acc,
        "wall_time_s": round(elapsed, 1),
        "content_sha256": manifest.get("content_sha256"),
    }
