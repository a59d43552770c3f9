"""Which layers a compression stage touches, and per-layer settings from a recipe file.

A recipe is YAML or JSON mapping glob patterns over module names to settings:

    layers:
      "layer1.*": {sparsity: 0.5}
      "layer3.*.conv2": {sparsity: 0.9}
      "linear": {sparsity: 0.3}          # naming the classifier includes it

A top-level mapping of patterns (without `layers:`) is accepted too. Later patterns override
earlier ones for a layer both match. A pattern that matches no layer is an error: it is almost
always a typo, and silently compressing nothing is the worst outcome.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable
from pathlib import Path

from torch import nn

from mncli.errors import BadInput


def load_recipe(path: Path, allowed_keys: Iterable[str]) -> dict[str, dict]:
    """Read a recipe file into {pattern: settings}; unknown keys are refused."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"recipe file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - any parse error is the user's file
        raise BadInput(f"recipe {path} is not valid YAML/JSON: {str(exc).splitlines()[0]}") from None
    if isinstance(data, dict) and "layers" in data:
        data = data["layers"]
    if not isinstance(data, dict) or not data:
        raise BadInput(f"recipe {path} names no layer", hint='e.g. layers: {"layer1.*": {sparsity: 0.5}}')
    allowed = set(allowed_keys)
    recipe: dict[str, dict] = {}
    for pattern, settings in data.items():
        if not isinstance(settings, dict):
            raise BadInput(f"recipe {path}: settings of {pattern!r} must be a mapping, got {settings!r}")
        unknown = sorted(set(settings) - allowed)
        if unknown:
            raise BadInput(
                f"recipe {path}: unknown key {unknown[0]!r} for {pattern!r}",
                hint=f"allowed keys: {', '.join(sorted(allowed))}",
            )
        recipe[str(pattern)] = dict(settings)
    return recipe


def compute_layers(model: nn.Module) -> list[str]:
    """Names of the conv and linear modules, in registration order."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear)]


def layer_roles(model: nn.Module) -> dict[str, str]:
    """Role of each conv/linear layer: stem, classifier, shortcut, depthwise, se, conv or linear.

    Relies on the zoo's naming conventions: residual projections contain "shortcut" (or
    "downsample"), squeeze-excite convs sit in a module named "se", the first conv is the stem and
    the last linear is the classifier.
    """
    modules = dict(model.named_modules())
    names = compute_layers(model)
    roles: dict[str, str] = {}
    convs = [n for n in names if isinstance(modules[n], nn.Conv1d | nn.Conv2d)]
    linears = [n for n in names if isinstance(modules[n], nn.Linear)]
    for name in names:
        module = modules[name]
        parts = name.split(".")
        if isinstance(module, nn.Linear):
            roles[name] = "linear"
        elif "shortcut" in name or "downsample" in name:
            roles[name] = "shortcut"
        elif "se" in parts[:-1] or name.endswith(".se"):
            roles[name] = "se"
        elif module.groups > 1 and module.groups == module.in_channels:
            roles[name] = "depthwise"
        else:
            roles[name] = "conv"
    if convs:
        roles[convs[0]] = "stem"
    if linears:
        roles[linears[-1]] = "classifier"
    elif convs and len(convs) > 1:
        roles[convs[-1]] = "classifier"
    return roles


def match(names: Iterable[str], pattern: str) -> list[str]:
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def select_layers(
    model: nn.Module,
    patterns: Iterable[str] | None = None,
    *,
    exclude_roles: Iterable[str] = ("stem", "classifier"),
    include_depthwise: bool = True,
) -> list[str]:
    """The layers a stage compresses, in model order.

    Without patterns: every conv/linear whose role is not excluded (depthwise by option).
    With patterns: the layers they match, whatever their role; a pattern starting with "!" removes
    the layers it matches. A pattern matching nothing is a BadInput.
    """
    names = compute_layers(model)
    if not names:
        raise BadInput("the model has no conv or linear layer to compress")
    patterns = list(patterns or [])
    include = [p for p in patterns if not p.startswith("!")]
    exclude = [p[1:] for p in patterns if p.startswith("!")]
    if include:
        chosen: set[str] = set()
        for pattern in include:
            hits = match(names, pattern)
            if not hits:
                raise BadInput(f"layer pattern {pattern!r} matches no layer", hint=_layer_hint(names))
            chosen.update(hits)
    else:
        roles = layer_roles(model)
        skip = set(exclude_roles)
        if not include_depthwise:
            skip.add("depthwise")
        chosen = {n for n in names if roles[n] not in skip}
    for pattern in exclude:
        hits = match(names, pattern)
        if not hits:
            raise BadInput(f"layer pattern {pattern!r} matches no layer", hint=_layer_hint(names))
        chosen.difference_update(hits)
    return [n for n in names if n in chosen]


def resolve_recipe(model: nn.Module, recipe: dict[str, dict], candidates: Iterable[str]) -> dict[str, dict]:
    """Per-layer settings: every candidate layer gets {} plus what matching patterns set.

    A pattern may name a layer outside the candidates (the stem, say): that layer is included.
    """
    names = compute_layers(model)
    result: dict[str, dict] = {n: {} for n in candidates}
    for pattern, settings in recipe.items():
        hits = match(names, pattern)
        if not hits:
            raise BadInput(f"recipe pattern {pattern!r} matches no layer", hint=_layer_hint(names))
        for name in hits:
            result.setdefault(name, {}).update(settings)
    return {n: result[n] for n in names if n in result}


def _layer_hint(names: list[str]) -> str:
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    return f"layers are: {shown} (see `mncli inspect`)"
