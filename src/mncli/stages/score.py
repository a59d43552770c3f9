"""The `score` stage: the MicroNet score of an artifact (real values, verified claims), of an ONNX
model (`mncli.scoring.onnx`: ops from the graph, bits from its QDQ nodes and tensor types), or of an
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
    """How a ternary layer's parameters are counted (each form dense or sparse, whichever is smaller)."""

    CODES2 = "codes2"  # official: 2 bits per non-zero plus the mask, or 2 bits per code dense
    SIGN1 = "sign1"  # EC2T: the mask says non-zero, 1 bit the sign; or 2 bits per code dense
    DENSE2 = "dense2"  # MIT (ProxylessNAS + TTQ): 2 bits per code dense whatever the zeros


class TernaryMults(enum.StrEnum):
    """How a ternary layer's multiplications are counted."""

    DENSE = "dense"  # official: one per weight
    FACTORIZED = "factorized"  # EC2T: sum the +1 and -1 inputs, then 2 mults per output


class Accumulation(enum.StrEnum):
    """How the additions of a layer's dot products are weighted."""

    FLAT = "flat"  # every add at the layer's accumulator width
    TREE = "tree"  # RL1: per level of a binary adder tree, at the widths the spec's acc_tree proves


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
    accumulation: Accumulation = Accumulation.FLAT
    image_size: int | None = None  # score an artifact at this resolution instead of its own

    def validate(self) -> ScoreConfig:
        """BadInput for a choice out of its set (plain strings from Python are accepted)."""
        self.ternary_storage = parse_choice(TernaryStorage, self.ternary_storage, "--ternary-storage")
        self.ternary_mults = parse_choice(TernaryMults, self.ternary_mults, "--ternary-mults")
        self.accumulation = parse_choice(Accumulation, self.accumulation, "--accumulation")
        if self.image_size is not None:
            from mncli.data.datasets import check_image_size

            check_image_size(self.image_size)
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
        "accumulation": cfg.accumulation.value,
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
    shape = input_shape(arch)
    if cfg.image_size is not None and cfg.image_size != shape[1]:
        log(f"scoring at {cfg.image_size} px (--image-size; the artifact's resolution is {shape[1]} px)")
        shape = (shape[0], cfg.image_size, cfg.image_size)
    report = score_model(
        model,
        bundle.specs,
        input_shape=shape,
        task=dataset,
        test_accuracy=_test_accuracy(bundle.manifest),
        **_score_kwargs(cfg),
    )
    return {"model": arch, "source": str(path), "stage": bundle.manifest.get("stage"), **report}


def is_onnx(path: Path | str) -> bool:
    """An ONNX model rather than an mncli artifact: by its suffix."""
    return Path(path).suffix.lower() == ".onnx"


def _onnx_task(cfg: ScoreConfig, graph) -> str:
    """--dataset, else the task an mncli export recorded (the artifact's), else imagenet for 1000
    classes at 128 px or more, else cifar100 (said in the log either way)."""
    if cfg.dataset:
        return _check_dataset(cfg.dataset)
    recorded = graph.metadata.get("mncli.task") or graph.metadata.get("mncli.dataset")
    if recorded:
        return _check_dataset(recorded)
    size = min(graph.input_shape[1:] or (0,))
    guess = "imagenet" if graph.num_classes == 1000 and size >= 128 else "cifar100"
    log(f"no --dataset given and none recorded in {cfg.artifact}: scoring it for {guess}")
    return guess


def _score_onnx(cfg: ScoreConfig) -> dict:
    from mncli.scoring.onnx import load_onnx, score_onnx

    graph = load_onnx(cfg.artifact)
    task = _onnx_task(cfg, graph)
    accuracy = graph.metadata.get("mncli.test_top1")
    try:
        accuracy = float(accuracy) if accuracy is not None else None
    except ValueError:
        accuracy = None
    report = score_onnx(graph, task=task, test_accuracy=accuracy, **_score_kwargs(cfg))
    return {"model": graph.arch(), "source": str(cfg.artifact), "format": "onnx", **report}


def run(cfg: ScoreConfig) -> dict:
    """Score an artifact or an architecture; returns the `--json` object."""
    if (cfg.artifact is None) == (cfg.arch is None):
        raise BadInput(
            "give exactly one of an artifact or --arch",
            hint="mncli score model.safetensors, mncli score model.onnx, or mncli score --arch wrn-28-10 "
            "--dataset cifar100",
        )
    if cfg.image_size is not None and (cfg.artifact is None or is_onnx(cfg.artifact)):
        raise BadInput(
            "--image-size applies to an artifact (an ONNX graph has its own input shape)",
            hint="score an architecture at another size with --arch-opt input_size=N",
        )
    if cfg.artifact is not None and cfg.arch_opts:
        raise BadInput(
            "--arch-opt only applies with --arch (no artifact): an artifact records its architecture",
            hint=f"drop --arch-opt, or score the architecture: mncli score --arch NAME --arch-opt "
            f"{next(iter(cfg.arch_opts))}=...",
        )
    cfg.validate()
    if cfg.arch is not None:
        return _score_arch(cfg)
    return _score_onnx(cfg) if is_onnx(cfg.artifact) else _score_artifact(cfg)
