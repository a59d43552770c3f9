"""The model registry: families register themselves with `@register_family`; names resolve to a family.

A family is a builder function whose keyword arguments are the architecture's knobs. A name pattern may
fix some of them (`wrn-28-10` fixes depth and widen_factor); the rest come from the caller or the
builder's defaults. Every model carries `model.arch = {"name", "args"}` with all resolved arguments,
so `build_model(model.arch)` rebuilds it. Families live one per module in this package and are found
by importing every module of the package, so a new family is one new file.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import pkgutil
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mncli.errors import BadInput
from mncli.text import first_line, shown

COMMON_ARGS = ("num_classes", "in_channels", "input_size")

# Ranges every architecture argument must lie in (inclusive; an open end is marked), whatever the
# family: enough for every real model, and a refusal, before any data is read or memory is taken,
# of what could only fail later (negative sizes) or exhaust the machine (a billion classes).
ARG_RANGES: dict[str, tuple[float, float]] = {
    "num_classes": (1, 100_000),
    "in_channels": (1, 1024),
    "input_size": (1, 4096),
    "dropout": (0.0, 1.0),
    "drop_path": (0.0, 1.0),
    "bn_momentum": (0.0, 1.0),
}
POSITIVE_ARGS = ("width_mult", "depth_mult", "bn_eps", "expand")  # > 0
MAX_INT = 10_000  # any other integer argument: 1..MAX_INT, or 0..MAX_INT for these:
ZERO_ARGS = ("depth", "head", "head_channels", "padding", "variant")
MAX_FLOAT = 1_000.0  # any other number: 0..MAX_FLOAT
MAX_LIST = 1_000  # items of a list argument
MAX_PARAMS = 500_000_000  # parameters of a model built from arguments (2 GB of fp32 weights)


@dataclass
class Family:
    name: str
    pattern: re.Pattern
    builder: Callable[..., Any]
    description: str
    examples: list[str]
    default_dataset: str | Callable[[dict], str] | None = None
    name_args: Callable[[re.Match], dict] | None = None
    resolve: Callable[[dict], dict] | None = None
    hints: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    # Families from outside the zoo (models/external.py): a builder that takes any keyword, where
    # the code came from (recorded in model.arch["source"]), and whether to check on the meta
    # device that the model takes the recorded input and gives num_classes outputs.
    open_args: bool = False
    source: dict | None = None
    check_outputs: bool = False

    def args_from_name(self, match: re.Match) -> dict:
        if self.name_args is not None:
            return self.name_args(match)
        return {k: _coerce(k, v, self.hints.get(k)) for k, v in match.groupdict().items() if v is not None}

    def dataset_for(self, args: dict) -> str | None:
        if callable(self.default_dataset):
            return self.default_dataset(args)
        return self.default_dataset


_FAMILIES: dict[str, Family] = {}
_loaded = False


def register_family(
    name: str,
    *,
    pattern: str,
    description: str,
    examples: list[str],
    default_dataset: str | Callable[[dict], str] | None = None,
    name_args: Callable[[re.Match], dict] | None = None,
    resolve: Callable[[dict], dict] | None = None,
) -> Callable:
    """Register a builder under a name pattern (a regex that must match the whole model name).

    Named groups of the pattern become arguments (converted by the builder's annotations) unless
    `name_args` converts the match itself. `resolve(args) -> args` fills defaults that depend on
    other arguments (EfficientNet's variant table) so the recorded arguments are all concrete.
    """

    def decorator(builder: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(builder)
        missing = [a for a in COMMON_ARGS if a not in signature.parameters]
        if missing:
            raise TypeError(f"model family {name} must accept {missing}")
        hints = typing.get_type_hints(builder)
        defaults = {
            k: p.default for k, p in signature.parameters.items() if p.default is not inspect.Parameter.empty
        }
        _FAMILIES[name] = Family(
            name=name,
            pattern=re.compile(pattern),
            builder=builder,
            description=description,
            examples=list(examples),
            default_dataset=default_dataset,
            name_args=name_args,
            resolve=resolve,
            hints=hints,
            defaults=defaults,
        )
        return builder

    return decorator


def _load_families() -> None:
    """Import every module of `mncli.models` once so their decorators run."""
    global _loaded
    if _loaded:
        return
    import mncli.models as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in ("registry", "external", "layouts"):
            importlib.import_module(f"mncli.models.{info.name}")
    _loaded = True
    _load_entry_points()


ENTRY_POINT_GROUP = "mncli.models"


def _load_entry_points() -> None:
    """Families that installed packages declare in the `mncli.models` entry-point group: a module
    (importing it runs its @register_family decorators) or a builder (registered under the entry
    point's name). A plugin that fails to load is a warning, never the end of the command."""
    from importlib.metadata import entry_points

    from mncli.log import warn

    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = point.load()
            if not isinstance(loaded, types.ModuleType) and point.name not in _FAMILIES:
                from mncli.models.external import family_of_entry_point

                register_family(**family_of_entry_point(point.name, loaded))(loaded)
        except Exception as exc:  # noqa: BLE001 - whatever a plugin raises: it is skipped, and said
            warn(f"model plugin {point.name} ({point.value}) not loaded: {first_line(exc)}")


def families() -> dict[str, Family]:
    _load_families()
    return dict(_FAMILIES)


def known_names() -> list[str]:
    return [n for fam in families().values() for n in fam.examples]


def find_family(name: str) -> tuple[Family, dict]:
    """The family whose pattern matches `name`, and the arguments the name fixes."""
    if not isinstance(name, str):
        raise BadInput(f"architecture name must be a string, got {shown(name)}")
    from mncli.models.external import family_for, is_reference

    if is_reference(name):
        return family_for(name), {}
    for family in families().values():
        match = family.pattern.fullmatch(name.strip().lower())
        if match:
            return family, family.args_from_name(match)
    raise BadInput(
        f"unknown architecture {shown(name)}",
        hint="known: "
        + ", ".join(known_names())
        + ", torchvision:NAME, timm:NAME, path/to/file.py:builder (see `mncli models`)",
    )


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Convert a value (possibly a string from the command line) to the builder's annotated type."""
    if hint is None or hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(key, value, option)
            except BadInput as exc:
                errors.append(exc.message)
        raise BadInput(errors[0] if errors else f"bad value for {key}: {shown(value)}")
    if origin is list:
        (item_hint,) = typing.get_args(hint) or (Any,)
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, list | tuple):
            raise BadInput(f"argument {key} must be a list, got {shown(value)}")
        if len(value) > MAX_LIST:
            raise BadInput(f"argument {key} has {len(value):,} items; at most {MAX_LIST:,} are accepted")
        return [_coerce(key, v, item_hint) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise BadInput(f"argument {key} must be true or false, got {shown(value)}")
    if hint is int:
        if isinstance(value, bool):
            raise BadInput(f"argument {key} must be an integer, got {shown(value)}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d{1,18}", value.strip()):
            return int(value)
        raise BadInput(f"argument {key} must be an integer, got {shown(value)}")
    if hint is float:
        number = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value) if abs(value) < 1e308 else math.inf
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None or not math.isfinite(number):
            raise BadInput(f"argument {key} must be a finite number, got {shown(value)}")
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        raise BadInput(f"argument {key} must be a string, got {shown(value)}")
    return value


def resolve_args(name: str, args: dict | None = None) -> tuple[Family, dict]:
    """Every argument of the model `name` with `args` applied, checked and made concrete."""
    family, from_name = find_family(name)
    args = dict(args or {})
    allowed = set(family.defaults) | set(from_name)
    unknown = [] if family.open_args else sorted(set(args) - allowed)
    if unknown:
        raise BadInput(
            f"{name} has no argument {shown(', '.join(unknown))}",
            hint=f"allowed arguments of {name}: {', '.join(sorted(allowed))}",
        )
    resolved = dict(family.defaults)
    resolved.update(from_name)
    for key, value in args.items():
        value = _coerce(key, value, family.hints.get(key))
        if key in from_name and value != from_name[key]:
            raise BadInput(
                f"{name} fixes {key}={from_name[key]!r}, but {key}={shown(value)} was given",
                hint="drop the argument or change the name",
            )
        resolved[key] = value
    for key in [*from_name, *args]:
        if key in ARG_RANGES or family.source is None:  # a foreign builder's own knobs are its own
            check_range(name, key, resolved[key])
    if family.resolve is not None:
        try:
            resolved = family.resolve(resolved)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise BadInput(f"cannot build {name}: {first_line(exc)}") from exc
    resolved = _jsonable_args(name, resolved)
    return family, resolved


def check_range(name: str, key: str, value: Any) -> None:
    """BadInput when an argument's value is outside what any model of the zoo can take (ARG_RANGES,
    POSITIVE_ARGS; other integers 1..MAX_INT (ZERO_ARGS from 0), other numbers 0..MAX_FLOAT; lists
    item by item)."""
    if isinstance(value, list | tuple):
        for item in value:
            check_range(name, key, item)
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    if isinstance(value, int):
        low, high = ARG_RANGES.get(key, (0 if key in ZERO_ARGS else 1, MAX_INT))
    else:
        low, high = ARG_RANGES.get(key, (0.0, MAX_FLOAT))
    if key in POSITIVE_ARGS and value <= 0:
        raise BadInput(f"{name}: {key} must be above 0, got {shown(value)}")
    if not low <= value <= high:
        raise BadInput(
            f"{name}: {key}={shown(value)} is outside {_fmt(low)}..{_fmt(high)}",
            hint=f"give {key} between {_fmt(low)} and {_fmt(high)}",
        )


def _fmt(number: float) -> str:
    return f"{number:,}" if isinstance(number, int) else f"{number:g}"


def _jsonable_args(name: str, args: dict) -> dict:
    def convert(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {str(k): convert(v) for k, v in value.items()}
        return value

    args = {k: convert(v) for k, v in args.items()}
    try:
        json.dumps(args, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise BadInput(f"arguments of {name} are not JSON-serialisable: {first_line(exc)}") from exc
    return args


def create_model(name: str, **args: Any):
    """Build a registered model; `model.arch` records the name and every resolved argument."""
    import torch

    family, resolved = resolve_args(name, args)
    builder_args = _builder_args(family, resolved)
    on_meta = torch.get_default_device().type == "meta"
    if not on_meta:  # first its size, on the meta device: no memory is taken for a model too large
        with torch.device("meta"):
            _check_built(family, name, resolved, _build(family, name, builder_args, args))
    model = _build(family, name, builder_args, args)
    if on_meta:
        _check_built(family, name, resolved, model)
    model.arch = {"name": name, "args": resolved}
    if family.source is not None:  # foreign code: its canonical reference, and where it came from
        model.arch = {"name": family.name, "args": resolved, "source": dict(family.source)}
    return model


def _builder_args(family: Family, resolved: dict) -> dict:
    if family.open_args:
        return dict(resolved)
    return {k: v for k, v in resolved.items() if k in family.defaults or k in family.hints}


def _check_built(family: Family, name: str, resolved: dict, model) -> None:
    """Its size (on the meta device), and for foreign builders that it is a model that takes the
    recorded input and gives num_classes outputs (where a meta forward pass can tell)."""
    import torch
    from torch import nn

    if not isinstance(model, nn.Module):
        raise BadInput(f"{name} returned {type(model).__name__}, not a torch.nn.Module")
    _count_params(name, model)
    if not family.check_outputs:
        return
    channels, size, classes = (resolved.get(k) for k in ("in_channels", "input_size", "num_classes"))
    if not (channels and size and classes):
        return
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, int(channels), int(size), int(size), device="meta"))
    except Exception:  # noqa: BLE001 - code a meta forward pass cannot run: no check, not an error
        return
    if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[1] != int(classes):
        raise BadInput(
            f"{name} gives {out.shape[1]} outputs, but num_classes is {classes}",
            hint="let the builder take num_classes, or give --arch-opt num_classes=N",
        )


# What a builder raises for arguments it cannot take (a negative size is torch's RuntimeError).
_BUILD_ERRORS = (ValueError, TypeError, ZeroDivisionError, RuntimeError, IndexError, KeyError, OverflowError)


def _build(family: Family, name: str, builder_args: dict, given: dict):
    import torch

    errors = Exception if family.source is not None else _BUILD_ERRORS  # foreign code raises anything
    try:
        try:
            return family.builder(**builder_args)
        except (NotImplementedError, RuntimeError):
            if family.source is None or torch.get_default_device().type != "meta":
                raise
            # Foreign code that computes with tensors while building (torchvision's RegNet) cannot
            # run on the meta device: build on the CPU, then drop the values.
            with torch.device("cpu"):
                return family.builder(**builder_args).to("meta")
    except BadInput:
        raise
    except errors as exc:
        detail = f" with {shown(given, 120)}" if given else ""
        raise BadInput(f"cannot build {name}{detail}: {first_line(exc)}") from exc


def _count_params(name: str, model) -> int:
    count = sum(p.numel() for p in model.parameters())
    if count > MAX_PARAMS:
        raise BadInput(
            f"{name} with these arguments has {count:,} parameters; at most {MAX_PARAMS:,} are accepted",
            hint="lower the width or depth arguments",
        )
    return count


def check_args(name: str, args: dict | None = None) -> None:
    """Refuse, before any data is read, arguments that cannot make a model of `name`: their types and
    ranges, and a size over MAX_PARAMS built on the meta device with the arguments not given left
    at their defaults (what then fails to build may yet build with the data's own sizes)."""
    import torch

    family, resolved = resolve_args(name, args)
    builder_args = _builder_args(family, resolved)
    with torch.device("meta"):
        try:
            model = _build(family, name, builder_args, args or {})
        except BadInput:
            return
    _count_params(name, model)


def input_shape_of(name: str, args: dict) -> tuple[int, int, int]:
    _, resolved = resolve_args(name, args)
    if resolved.get("in_channels") is None or resolved.get("input_size") is None:
        raise BadInput(
            f"{name}: the input's size is not known",
            hint="give --arch-opt in_channels=C --arch-opt input_size=S (or a --dataset)",
        )
    return int(resolved["in_channels"]), int(resolved["input_size"]), int(resolved["input_size"])


def default_dataset(name: str, args: dict | None = None) -> str | None:
    family, resolved = resolve_args(name, args)
    return family.dataset_for(resolved)


_list_cache: dict[tuple, list[dict]] = {}


def list_models() -> list[dict]:
    """One row per example name: name, family, description, parameters at default arguments."""
    import copy

    key = tuple(sorted(families()))
    if key not in _list_cache:
        _list_cache.clear()
        _list_cache[key] = _count_models()
    return copy.deepcopy(_list_cache[key])


def _count_models() -> list[dict]:
    import torch

    rows = []
    for family in sorted(families().values(), key=lambda f: f.name):
        for name in family.examples:
            with torch.device("meta"):
                model = create_model(name)
            args = model.arch["args"]
            rows.append(
                {
                    "name": name,
                    "family": family.name,
                    "description": family.description,
                    "params": sum(p.numel() for p in model.parameters()),
                    "input_shape": [args["in_channels"], args["input_size"], args["input_size"]],
                    "num_classes": args["num_classes"],
                    "default_dataset": family.dataset_for(args),
                }
            )
    return rows
