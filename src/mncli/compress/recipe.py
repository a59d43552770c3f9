"""Which layers a compression stage touches, and per-layer settings from a recipe file.

A recipe is YAML or JSON mapping glob patterns over module names to settings:

    layers:
      "layer1.*": {sparsity: 0.5}
      "layer3.*.conv2": {sparsity: 0.9}
      "linear": {sparsity: 0.3}          # naming the classifier includes it

A top-level mapping of patterns (without `layers:`) is accepted too. Later patterns override
earlier ones for a layer both match. A pattern that matches no layer is an error: it is almost
always a typo, and silently compressing nothing is the worst outcome.

A layer may also be named by its index, as the reweighted-L1 seed's README lists per-layer bits
(`QBNs[3]=6bits`, `QBNs[Layers-3]=6bits`): `[3]`, `[-3]` or `[Layers-3]`, optionally written with the
seed's `QBNs` in front. The index counts the conv and linear layers in the order the model registers
its modules (`compute_layers`); negative indices and `Layers-k` count from the end (`Layers` is their
number). For the seed's own network (`mobilenetv2-rl1`) that order is the seed's: its quantizer
counted the state dict's weights of two or more dimensions, the same layers in the same order.

    layers:
      QBNs[3]: {weight_bits: 6}           # the fourth conv/linear layer
      "[-1]": {weight_bits: 8}            # the last one (quote it: a bare [ starts a YAML list)
      QBNs[Layers-3]: {weight_bits: 6}
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path

from torch import nn

from mncli.errors import BadInput
from mncli.log import debug
from mncli.text import shown

MAX_RECIPE_BYTES = 1 << 20  # a recipe is a few lines; anything larger is the wrong file

# What the values of the keys the stages know must be (a stage checks its own ranges again):
_FRACTION = "a number in [0, 1)"
_BITS = "an integer number of bits"
_WEIGHT_BITS = "a number of bits (fractional ones too: 2.5)"
_BOOL = "true or false"
_KEY_KINDS = {
    "sparsity": _FRACTION,
    "channel_ratio": _FRACTION,
    "weight_bits": _WEIGHT_BITS,
    "act_bits": _BITS,
    "per_channel": _BOOL,
}


def load_recipe(path: Path, allowed_keys: Iterable[str]) -> dict[str, dict]:
    """Read a recipe file into {pattern: settings}; anything but UTF-8 YAML/JSON of that shape, with
    known keys and scalar values of the right kind, is a BadInput naming the file."""
    path = Path(path)
    data = parse_recipe_text(path, read_recipe_text(path))
    if isinstance(data, dict) and "layers" in data:
        extra = sorted(repr(k) for k in data if k != "layers")
        if extra:
            raise BadInput(
                f"recipe {path}: unknown top-level key {extra[0]}", hint="a recipe holds only `layers:`"
            )
        data = data["layers"]
    example = 'e.g. layers: {"layer1.*": {sparsity: 0.5}}'
    if not isinstance(data, dict):
        raise BadInput(
            f"recipe {path}: layers must be a mapping of layer patterns to settings, got {_kind(data)}",
            hint=example,
        )
    if not data:
        raise BadInput(f"recipe {path} names no layer", hint=example)
    allowed = {str(k) for k in allowed_keys}
    recipe: dict[str, dict] = {}
    for pattern, settings in data.items():
        if isinstance(pattern, int) and not isinstance(pattern, bool):
            pattern = str(pattern)  # YAML reads `0:` (a Sequential's child) as a number
        if not isinstance(pattern, str) or not pattern.strip():
            raise BadInput(
                f"recipe {path}: layer pattern {shown(pattern)} is not a non-empty string",
                hint='quote patterns: "layer1.*"',
            )
        if not isinstance(settings, dict):
            raise BadInput(
                f"recipe {path}: settings of {pattern!r} must be a mapping, got {shown(settings)}",
                hint=example,
            )
        for key, value in settings.items():
            if not isinstance(key, str) or key not in allowed:
                raise BadInput(
                    f"recipe {path}: unknown key {shown(key)} for {pattern!r}",
                    hint=f"allowed keys: {', '.join(sorted(allowed))}",
                )
            _check_value(path, pattern, key, value)
        recipe[pattern] = dict(settings)
    return recipe


def read_recipe_text(path: Path) -> str:
    if not path.exists():
        raise BadInput(f"recipe file not found: {path}")
    if not path.is_file():
        raise BadInput(f"recipe {path} is not a regular file", hint="give a YAML or JSON file")
    try:
        size = path.stat().st_size
        if size > MAX_RECIPE_BYTES:
            raise BadInput(
                f"recipe {path} is {size:,} bytes: too large for a recipe", hint="give a YAML or JSON file"
            )
        raw = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read recipe {path}: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadInput(
            f"recipe {path} is not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start})",
            hint="a recipe is a YAML or JSON text file",
        ) from None


def parse_recipe_text(path: Path, text: str) -> object:
    import yaml

    as_json = path.suffix.lower() == ".json"
    try:
        return json.loads(text) if as_json else yaml.safe_load(text)
    except RecursionError:
        reason = "nested too deeply"
    except json.JSONDecodeError as exc:
        reason = f"{exc.msg} (line {exc.lineno}, column {exc.colno})"
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        reason = f"{exc.problem or exc.context or 'syntax error'}{where}"
    except Exception as exc:  # noqa: BLE001 - any other parse error is the user's file too
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
    raise BadInput(
        f"recipe {path} is not valid {'JSON' if as_json else 'YAML'}: {reason[:160]}",
        hint='e.g. layers: {"layer1.*": {sparsity: 0.5}}',
    )


def _check_value(path: Path, pattern: str, key: str, value: object) -> None:
    """Scalars only; the keys the stages know must hold values of their kind (null: the default)."""
    kind = _KEY_KINDS.get(key)
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if value is None:
        ok = kind != _BOOL
    elif kind == _FRACTION:
        ok = number and math.isfinite(value) and 0.0 <= value < 1.0
    elif kind == _BITS:
        ok = number and math.isfinite(value) and float(value).is_integer() and 1 <= value <= 32
    elif kind == _WEIGHT_BITS:  # quantize checks the ranges of whole and fractional bits
        ok = number and math.isfinite(value) and 1 <= value <= 32
    elif kind == _BOOL:
        ok = isinstance(value, bool)
    else:
        ok = isinstance(value, bool | str) or (number and math.isfinite(value))
    if not ok:
        raise BadInput(
            f"recipe {path}: {key} of {pattern!r} must be {kind or 'a number, string or boolean'}, "
            f"got {shown(value)}",
        )


def _kind(value: object) -> str:
    return {list: "a list", str: "a string", type(None): "nothing"}.get(type(value), shown(value))


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


# `[3]`, `[-3]`, `[Layers-3]`, each optionally after the seed's `QBNs`
_INDEX = re.compile(r"(?:qbns)?\[\s*(?:(?P<index>[+-]?\d+)|layers\s*-\s*(?P<back>\d+))\s*\]", re.IGNORECASE)


def layer_index(pattern: str) -> int | None:
    """The index a pattern names (`[3]` -> 3, `[Layers-3]` and `[-3]` -> -3), None for a glob."""
    found = _INDEX.fullmatch(pattern.strip())
    if found is None:
        return None
    return int(found["index"]) if found["index"] is not None else -int(found["back"])


def match(names: Iterable[str], pattern: str) -> list[str]:
    """The layers a glob pattern matches, or the one layer an index pattern names (BadInput when the
    index is outside the layers)."""
    names = list(names)
    index = layer_index(pattern)
    if index is None:
        return [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    if not -len(names) <= index < len(names):
        raise BadInput(
            f"layer index {pattern!r} is outside the model's {len(names)} conv/linear layers",
            hint=f"indices run from 0 to {len(names) - 1} (or -{len(names)} to -1, Layers-k from the end)",
        )
    debug(f"layer {pattern} is {names[index]}")
    return [names[index]]


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
                raise BadInput(f"layer pattern {pattern!r} matches no layer", hint=layer_hint(names))
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
            raise BadInput(f"layer pattern {pattern!r} matches no layer", hint=layer_hint(names))
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
            raise BadInput(f"recipe pattern {pattern!r} matches no layer", hint=layer_hint(names))
        for name in hits:
            result.setdefault(name, {}).update(settings)
    return {n: result[n] for n in names if n in result}


def layer_hint(names: list[str]) -> str:
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    return f"layers are: {shown} (see `mncli inspect`), or [i] by index"
