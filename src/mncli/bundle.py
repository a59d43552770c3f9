"""A model with its architecture and per-layer compression specs: what every stage reads and writes.

`load_bundle` turns an artifact back into a runnable model (decoded real values, activation
quantizers re-attached); `save_bundle` writes one, with parents, lineage and the MicroNet score
recorded, so any artifact in a chain says where it came from and what it costs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mncli.artifact import codec
from mncli.errors import BadInput, MncliError
from mncli.log import warn
from mncli.text import one_line


@dataclass
class Bundle:
    model: nn.Module | None
    arch: dict
    specs: dict[str, dict] = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)
    path: Path | None = None
    weights: bool = True  # False for an architecture-only artifact (freshly initialised model)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        from mncli.models import input_shape

        return input_shape(self.arch)


def bundle_from_arch(name: str, args: dict | None = None) -> Bundle:
    """A freshly initialised model of a registered architecture."""
    from mncli.models import create_model

    model = create_model(name, **(args or {}))
    return Bundle(model=model, arch=copy.deepcopy(model.arch))


def attach_specs(model: nn.Module, specs: dict[str, dict]) -> None:
    """Install what the specs say lives beside the weights: activation quantizers and the
    `weight_scale` buffers of int layers, as placeholders that load_state_dict fills."""
    if specs:
        from mncli.models.quantized import install_act_quantizers

        install_act_quantizers(model, specs)


def _bad(path: Path, message: str, hint: str | None = None) -> BadInput:
    """One line naming the file (messages from below may not, and may run over several lines)."""
    message = one_line(message, 300)
    return BadInput(message if str(path) in message else f"{path}: {message}", hint=hint)


def _build(arch: dict, specs: dict, path: Path) -> nn.Module:
    """The manifest's architecture with its layer specs installed; BadInput for whatever it cannot be."""
    from mncli.models import build_model

    try:
        model = build_model(arch)
        _check_specs(model, specs, path)
        attach_specs(model, specs)
    except BadInput as exc:
        raise _bad(path, exc.message, exc.hint) from None
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as exc:
        raise _bad(path, f"cannot build architecture {arch.get('name')!r} from the manifest: {exc}") from None
    return model


def _check_specs(model: nn.Module, specs: dict, path: Path) -> None:
    """Every layer spec names a layer of the model, and one with a weight where it describes one."""
    modules = dict(model.named_modules())
    for name, spec in specs.items():
        if not name or name not in modules:
            raise BadInput(
                f"{path}: the compression spec names layer {name!r}, "
                f"which {model.arch['name']} does not have",
                hint="`mncli inspect` the artifact to see its layers",
            )
        describes_weight = spec.get("weight") not in (None, codec.FLOAT32) or spec.get("mask")
        if describes_weight and not isinstance(getattr(modules[name], "weight", None), torch.Tensor):
            raise BadInput(f"{path}: the compression spec describes the weight of {name!r}, which has none")


def _check_state(model: nn.Module, state: dict, arch: dict, path: Path) -> None:
    """The decoded tensors are exactly the model's, with its shapes and dtypes."""
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise BadInput(
            f"{path}: weights do not fit architecture {arch['name']}: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    for key, want in expected.items():
        got = state[key]
        if tuple(got.shape) != tuple(want.shape):
            raise BadInput(
                f"{path}: weights do not fit architecture {arch['name']}: {key} is stored as "
                f"{list(got.shape)}, the architecture needs {list(want.shape)}",
                hint="the manifest's arch no longer describes these tensors",
            )
        if got.dtype != want.dtype:
            raise BadInput(
                f"{path}: weights do not fit architecture {arch['name']}: {key} is stored as "
                f"{got.dtype}, the architecture needs {want.dtype}"
            )


def load_bundle(path: Path | str, *, require_weights: bool = True) -> Bundle:
    """Read an artifact into a runnable model (eval mode, CPU).

    An architecture-only artifact (search output) gives a freshly initialised model, or a
    BadInput when the caller needs trained weights. Whatever in the manifest does not fit (an
    architecture that cannot be built or no longer fits the tensors, specs naming layers the
    model lacks) is one BadInput line naming the file.
    """
    from mncli.artifact import load_artifact

    path = Path(path)
    tensors, manifest = load_artifact(path)  # the schema holds: arch and specs are dicts
    arch = manifest["arch"]
    specs = dict(manifest.get("compression", {}).get("layers", {}) or {})
    has_weights = bool(tensors)
    if not tensors and require_weights:
        raise BadInput(
            f"{path} is architecture-only (no weights)",
            hint=f"train it first: mncli train {path} --dataset D -o trained.safetensors",
        )
    if not tensors:
        model = _build(arch, specs, path)  # architecture only: a freshly initialised model
    else:
        from mncli.scoring import meta_device

        # Built on the meta device and filled with the decoded tensors themselves (assign=True):
        # no random initialisation, and memory stays near the decoded state's own size.
        with meta_device():
            model = _build(arch, specs, path)
        try:
            state = codec.decode_state(tensors, specs)
        except BadInput as exc:
            raise _bad(path, exc.message, exc.hint) from None
        del tensors
        _check_state(model, state, arch, path)
        try:
            model.load_state_dict(state, strict=True, assign=True)
        except (RuntimeError, ValueError, TypeError) as exc:  # never, after _check_state
            raise _bad(path, f"weights do not fit architecture {arch['name']}: {exc}") from None
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if tensor.is_meta:
                raise BadInput(f"{path}: no value for {name} in the artifact")
    model.eval()
    return Bundle(
        model=model,
        arch=copy.deepcopy(arch),
        specs=specs,
        manifest=manifest,
        path=path,
        weights=has_weights,
    )


def arch_score(arch: dict, dataset: str | None) -> dict:
    """The MicroNet score of an architecture without weights (counted on the meta device)."""
    import torch

    from mncli.models import build_model

    with torch.device("meta"):
        model = build_model(arch)
    return score_summary(model, {}, arch, dataset)


def score_summary(model: nn.Module, specs: dict, arch: dict, dataset: str | None) -> dict:
    """The MicroNet score of a model, as recorded in manifests (params, mults, adds, ops, score, task)."""
    from mncli.data import scoring_task
    from mncli.models import input_shape
    from mncli.scoring import score_model

    task = scoring_task(dataset)
    report = score_model(model, specs, input_shape=input_shape(arch), task=task)
    keys = ("params", "mults", "adds", "ops", "score")
    summary = {k: report[k] for k in keys if k in report}
    summary["task"] = report.get("task", task)
    return summary


def save_bundle(
    bundle: Bundle,
    out: Path | str,
    *,
    stage: str,
    params: dict | None = None,
    metrics: dict | None = None,
    data: dict | None = None,
    seed: int | None = None,
    compression: dict | None = None,
    weights: bool = True,
    extra: dict | None = None,
    device: str | None = None,
) -> dict:
    """Write a bundle as an artifact; returns the manifest written.

    `compression` holds stage-level facts (method, hyper-parameters) recorded beside the per-layer
    specs; `extra` adds top-level manifest sections (a search's probabilities, a grid's points).
    The score is recorded under metrics["score"] unless the caller already put it there.
    """
    from mncli.artifact import check_output, codec, lineage_from, new_manifest, parent_entry, save_artifact

    out = Path(out)
    check_output(out, bundle.path)
    metrics = dict(metrics or {})
    tensors = {}
    if weights and bundle.model is not None:
        model = bundle.model
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        tensors = codec.encode_state(state, bundle.specs)
        if "score" not in metrics:
            try:
                metrics["score"] = score_summary(
                    model, bundle.specs, bundle.arch, (data or {}).get("dataset")
                )
            except MncliError as exc:  # a model the counter cannot trace still gets saved
                warn(f"not scored: {exc.message}")
                metrics["score"] = {"error": exc.message}
    parents: list[dict] = []
    if bundle.path is not None and bundle.manifest.get("content_sha256"):
        parents = [parent_entry(bundle.path, bundle.manifest, out)]
    manifest = new_manifest(
        stage,
        arch=bundle.arch,
        params=params or {},
        seed=seed,
        parents=parents,
        lineage=lineage_from([(parents[0], bundle.manifest)]) if parents else [],
        data=data or {},
        metrics=metrics,
        compression={**(compression or {}), "layers": bundle.specs},
        device=device,
    )
    manifest.update(extra or {})
    return save_artifact(out, tensors, manifest)
