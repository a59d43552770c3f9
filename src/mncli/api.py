"""The Python API: score, load, save, train and compress an `nn.Module` in a script or a notebook.

The same stages the command line runs, on models in memory. A compression function changes the model
in place (its layers end holding their real, deployable values) and returns a report; the model's
per-layer compression specs travel with it as the attribute `model.mncli_specs`, so `save` and
`score` see what `prune`, `ternarize` and `quantize` did:

    import mncli
    model = mncli.load("fp.safetensors")
    data = mncli.load_data("fashion-mnist", subset=2000)
    mncli.prune(model, data, sparsity=0.5, epochs=2)
    mncli.quantize(model, data, weight_bits=8, act_bits=8, epochs=1)
    print(mncli.score(model)["score"], mncli.evaluate(model, data)["top1"])
    mncli.save(model, "small.safetensors", data=data)

Keyword arguments are the method's options (`PruneConfig`, `TernarizeConfig`, `QuantizeConfig`) or
training options (`TrainOptions`: epochs, lr, batch_size, ...), or pass `config=` and `train=` whole.
"""

from __future__ import annotations

import copy
from dataclasses import fields
from pathlib import Path
from typing import Any

from mncli.errors import BadInput
from mncli.stages.training import TrainOptions

SPECS = "mncli_specs"  # the attribute that carries a model's per-layer compression specs


def specs_of(model) -> dict[str, dict]:
    """The model's per-layer compression specs ({} for a plain float model)."""
    return getattr(model, SPECS, None) or {}


def load(path: str | Path):
    """The model of an artifact, ready to run (eval mode, CPU), with `.arch` and `.mncli_specs`.

    >>> model = mncli.load("fp.safetensors")
    """
    from mncli.bundle import load_bundle

    bundle = load_bundle(path, require_weights=False)
    setattr(bundle.model, SPECS, bundle.specs)
    bundle.model.mncli_manifest = bundle.manifest
    return bundle.model


def save(model, path: str | Path, *, data=None, metrics: dict | None = None, stage: str = "api") -> dict:
    """Write `model` as an artifact (weights in deployable form, manifest, score); returns the manifest.

    The model must come from the zoo (`mncli.load`, `mncli.models.create_model`): the manifest records
    its architecture so that any stage can rebuild it. `data` (a DataBundle) records the dataset.

    >>> mncli.save(model, "small.safetensors", data=data)
    """
    from mncli.bundle import Bundle, save_bundle

    arch = getattr(model, "arch", None)
    if not isinstance(arch, dict) or "name" not in arch:
        raise BadInput(
            "the model has no zoo architecture (model.arch), so an artifact could not rebuild it",
            hint="build it with mncli.models.create_model or load it with mncli.load",
        )
    bundle = Bundle(model=model.cpu().eval(), arch=copy.deepcopy(arch), specs=specs_of(model))
    return save_bundle(bundle, path, stage=stage, metrics=metrics, data=None if data is None else data.info)


def score(
    model, input_shape: tuple[int, int, int] | None = None, *, task: str | None = None, **rules: Any
) -> dict:
    """The MicroNet score of any `nn.Module`: params, ops, score and the per-layer table.

    `input_shape` is (C, H, W) (default: the zoo model's own); `task` the baseline it is scored
    against (cifar100 or imagenet; default cifar100); `rules` are `mncli.scoring.score_model`'s
    counting options (add_bits=32, freebie16=False, ternary_storage="codes2", ternary_mults="dense").

    >>> mncli.score(torchvision.models.resnet18(), input_shape=(3, 224, 224), task="imagenet")["score"]
    """
    from mncli.data import canonical_name
    from mncli.models import input_shape as arch_input_shape
    from mncli.scoring import score_model

    if input_shape is None:
        arch = getattr(model, "arch", None)
        if not isinstance(arch, dict):
            raise BadInput("give input_shape=(C, H, W) for a model that is not from the zoo")
        input_shape = arch_input_shape(arch)
    task = canonical_name(task) if task else "cifar100"
    return score_model(model, specs_of(model), input_shape=tuple(input_shape), task=task, **rules)


def load_data(name: str, **options: Any):
    """A dataset (train / val / test splits) as every stage loads it; `options` are the data options of
    `TrainOptions` (data_dir, download, subset, val_size, augment, batch_size).

    >>> data = mncli.load_data("fashion-mnist", subset=2000)
    """
    return TrainOptions(dataset=name, **options).validate().load_data()


def evaluate(model, data, split: str = "test") -> dict:
    """top1, top5 and loss of `model` on a split ("test" or "val") of `data` (a DataBundle).

    >>> mncli.evaluate(model, data)["top1"]
    """
    from mncli.engine import evaluate as evaluate_split

    if split not in ("test", "val"):
        raise BadInput(f"unknown split {split!r}", hint="use 'test' or 'val'")
    device = next(model.parameters()).device
    return evaluate_split(model, getattr(data, split), device)


def _split(kwargs: dict, config_class) -> tuple[dict, dict]:
    """Keyword arguments -> (the method config's, the training options')."""
    own = {f.name for f in fields(config_class)}
    training = {f.name for f in fields(TrainOptions)}
    unknown = set(kwargs) - own - training
    if unknown:
        raise TypeError(f"unknown options: {', '.join(sorted(unknown))}")
    return {k: v for k, v in kwargs.items() if k in own}, {k: v for k, v in kwargs.items() if k in training}


def _options(train: TrainOptions | None, data, extra: dict) -> TrainOptions:
    """`train` with `extra` on top; without `train`, only `extra` is set and the stage's and the
    method's defaults fill the rest, as on the command line."""
    from dataclasses import replace

    options = replace(train, **extra) if train is not None else TrainOptions.unset(**extra)
    if options.dataset is None:
        options.dataset = getattr(data, "name", None)
    return options


def train(model, data, train: TrainOptions | None = None, **options: Any) -> dict:
    """Train `model` in place on `data` (a DataBundle from `load_data`); returns validation and test
    accuracy and the run's history. Pruned layers keep their zeros.

    >>> mncli.train(model, data, epochs=2, lr=0.05)["val_acc"]
    """
    from mncli.stages.train import train_model
    from mncli.stages.training import final_metrics

    opts = _options(train, data, options).with_fallbacks().validate()
    result = train_model(model, data, opts, specs=specs_of(model))
    return final_metrics(model, data, result)


def _compress(method, model, data, train: TrainOptions) -> dict:
    from mncli.stages.compression import Run

    opts = method.options(train).with_fallbacks().validate()
    specs, arch = copy.deepcopy(specs_of(model)), copy.deepcopy(getattr(model, "arch", None) or {})
    method.check(model, specs, arch, opts)
    run = Run(model=model, specs=specs, arch=arch, data=data, options=opts)
    report = method.apply(run)
    setattr(run.model, SPECS, run.specs)
    if arch:
        run.model.arch = run.arch
    return report


def prune(model, data, config=None, train: TrainOptions | None = None, **options: Any) -> dict:
    """Prune `model` in place (AGP by default: the fraction `sparsity` of each layer's weights set to
    zero, with fine-tuning on `data`); returns the per-layer report.

    >>> mncli.prune(model, data, sparsity=0.5, epochs=2)["achieved"]
    """
    from mncli.stages.prune import PruneConfig, Pruning

    own, extra = _split(options, PruneConfig)
    return _compress(Pruning(config or PruneConfig(**own)), model, data, _options(train, data, extra))


def ternarize(model, data, config=None, train: TrainOptions | None = None, **options: Any) -> dict:
    """Ternarize `model` in place (TTQ by default: weights in {-Wn, 0, +Wp} per layer, fine-tuned on
    `data`); returns the report.

    >>> mncli.ternarize(model, data, method="ttq", epochs=2)
    """
    from mncli.stages.ternarize import Ternarization, TernarizeConfig

    own, extra = _split(options, TernarizeConfig)
    return _compress(
        Ternarization(config or TernarizeConfig(**own)), model, data, _options(train, data, extra)
    )


def quantize(model, data, config=None, train: TrainOptions | None = None, **options: Any) -> dict:
    """Quantize `model` in place (LSQ by default: `weight_bits`-bit weights and `act_bits`-bit input
    activations, fine-tuned on `data`; `ptq=True` for post-training calibration only); returns the report.

    >>> mncli.quantize(model, data, weight_bits=8, act_bits=8, epochs=1)
    """
    from mncli.stages.quantize import Quantization, QuantizeConfig

    own, extra = _split(options, QuantizeConfig)
    return _compress(Quantization(config or QuantizeConfig(**own)), model, data, _options(train, data, extra))
