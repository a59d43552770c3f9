"""The `score` stage: the MicroNet score of an artifact (real values, verified claims) or of an
architecture alone (counted on the meta device: no weights, no memory)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mncli.errors import BadInput
from mncli.log import log
from mncli.text import parse_choice


class TernaryStorage(enum.StrEnum):
    """How a ternary layer's parameters are counted."""

    CODES2 = "codes2"  # official: 2 bits per non-zero, plus the mask
    SIGN1 = "sign1"  # the mask says non-zero, 1 bit the sign


class TernaryMults(enum.StrEnum):
    """How a ternary layer's multiplications are counted."""

    DENSE = "dense"  # official: one per weight
    FACTORIZED = "factorized"  # EC2T: sum the +1 and -1 inputs, then 2 mults per output


# Dataset -> (num_classes, in_channels, input_size); imagenet's size is the architecture's native
# resolution (EfficientNet-Bn's own, from its family), or 224 for a CIFAR-sized architecture.
DATASET_SHAPES = {
    "cifar100": (100, 3, 32),
    "cifar10": (10, 3, 32),
    "fashion-mnist": (10, 1, 28),
    "mnist": (10, 1, 28),
    "imagenet": (1000, 3, None),
}
IMAGENET_DEFAULT_SIZE = 224


@dataclass
class ScoreConfig:
    artifact: Path | None = None
    arch: str | None = None
    arch_opts: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None
    add_bits: int = 32
    freebie16: bool = False
    ternary_storage: TernaryStorage = TernaryStorage.CODES2
    ternary_mults: TernaryMults = TernaryMults.DENSE
    infer: bool = False

    def validate(self) -> ScoreConfig:
        """BadInput for a choice out of its set (plain strings from Python are accepted)."""
        self.ternary_storage = parse_choice(TernaryStorage, self.ternary_storage, "--ternary-storage")
        self.ternary_mults = parse_choice(TernaryMults, self.ternary_mults, "--ternary-mults")
        return self


def _check_dataset(dataset: str) -> str:
    from mncli.data import scoring_task  # synthetic:classes=..,shape=.. scores as synthetic

    return scoring_task(dataset)


def arch_args_for(name: str, dataset: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments of `name` for `dataset`; explicit --arch-opt values win."""
    args = dict(opts)
    if dataset not in DATASET_SHAPES:
        return args
    classes, channels, size = DATASET_SHAPES[dataset]
    args.setdefault("num_classes", classes)
    args.setdefault("in_channels", channels)
    if size is None:
        from mncli.models import resolve_args

        _, resolved = resolve_args(name, {k: v for k, v in args.items() if k != "input_size"})
        native = int(resolved.get("input_size", 0))
        size = native if native >= 128 else IMAGENET_DEFAULT_SIZE
    args.setdefault("input_size", size)
    return args


def _test_accuracy(manifest: dict) -> float | None:
    metrics = manifest.get("metrics") or {}
    test = metrics.get("test")
    if isinstance(test, dict):
        for key in ("top1", "acc", "accuracy"):
            if isinstance(test.get(key), int | float):
                return float(test[key])
    for key in ("test_top1", "test_acc", "test_accuracy"):
        if isinstance(metrics.get(key), int | float):
            return float(metrics[key])
    return None


def _score_kwargs(cfg: ScoreConfig) -> dict:
    return {
        "add_bits": cfg.add_bits,
        "freebie16": cfg.freebie16,
        "ternary_storage": cfg.ternary_storage.value,
        "ternary_mults": cfg.ternary_mults.value,
        "infer": cfg.infer,
    }


def _score_arch(cfg: ScoreConfig) -> dict:
    from mncli.models import create_model, default_dataset, input_shape, resolve_args
    from mncli.scoring import score_model
    from mncli.scoring.metashapes import meta_device

    name = cfg.arch or ""
    resolve_args(name, cfg.arch_opts)  # unknown names and arguments fail here, before any defaults
    dataset = cfg.dataset or default_dataset(name, cfg.arch_opts) or "cifar100"
    if not cfg.dataset:
        log(f"no --dataset given: scoring {name} for {dataset}")
    dataset = _check_dataset(dataset)
    with meta_device():
        model = create_model(name, **arch_args_for(name, dataset, cfg.arch_opts))
    shape = input_shape(model.arch)
    report = score_model(model, {}, input_shape=shape, task=dataset, **_score_kwargs(cfg))
    return {"model": model.arch, "source": "architecture only, dense fp32", **report}


def _score_artifact(cfg: ScoreConfig) -> dict:
    from mncli.bundle import attach_specs, load_bundle
    from mncli.models import build_model, default_dataset, input_shape
    from mncli.scoring import score_model
    from mncli.scoring.metashapes import meta_device

    path = Path(cfg.artifact)
    if not path.is_file():
        raise BadInput(f"artifact {path} not found", hint="give a .safetensors file written by mncli")
    bundle = load_bundle(path, require_weights=False)
    model = bundle.model
    if not bundle.weights:  # architecture-only: count the shapes, never random values
        log(f"{path} has no weights: counting its architecture dense, claims unverified")
        with meta_device():
            model = build_model(bundle.arch)
            attach_specs(model, bundle.specs)
    arch = bundle.arch
    recorded = (bundle.manifest.get("data") or {}).get("dataset")
    dataset = cfg.dataset or recorded or default_dataset(arch["name"], arch.get("args", {})) or "cifar100"
    dataset = _check_dataset(dataset)
    report = score_model(
        model,
        bundle.specs,
        input_shape=input_shape(arch),
        task=dataset,
        test_accuracy=_test_accuracy(bundle.manifest),
        **_score_kwargs(cfg),
    )
    return {"model": arch, "source": str(path), "stage": bundle.manifest.get("stage"), **report}


def run(cfg: ScoreConfig) -> dict:
    """Score an artifact or an architecture; returns the `--json` object."""
    if (cfg.artifact is None) == (cfg.arch is None):
        raise BadInput(
            "give exactly one of an artifact or --arch",
            hint="mncli score model.safetensors, or mncli score --arch wrn-28-10 --dataset cifar100",
        )
    cfg.validate()
    return _score_arch(cfg) if cfg.arch is not None else _score_artifact(cfg)
