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
import pkgutil
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mncli.errors import BadInput

COMMON_ARGS = ("num_classes", "in_channels", "input_size")


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
        if info.name not in ("registry",):
            importlib.import_module(f"mncli.models.{info.name}")
    _loaded = True


def families() -> dict[str, Family]:
    _load_families()
    return dict(_FAMILIES)


def known_names() -> list[str]:
    return [n for fam in families().values() for n in fam.examples]


def find_family(name: str) -> tuple[Family, dict]:
    """The family whose pattern matches `name`, and the arguments the name fixes."""
    if not isinstance(name, str):
        raise BadInput(f"architecture name must be a string, got {name!r}")
    for family in families().values():
        match = family.pattern.fullmatch(name.strip().lower())
        if match:
            return family, family.args_from_name(match)
    raise BadInput(
        f"unknown architecture {name!r}",
        hint="known: " + ", ".join(known_names()) + " (see `mncli models`)",
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
        raise BadInput(errors[0] if errors else f"bad value for {key}: {value!r}")
    if origin is list:
        (item_hint,) = typing.get_args(hint) or (Any,)
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, list | tuple):
            raise BadInput(f"argument {key} must be a list, got {value!r}")
        return [_coerce(key, v, item_hint) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise BadInput(f"argument {key} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise BadInput(f"argument {key} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
        raise BadInput(f"argument {key} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise BadInput(f"argument {key} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise BadInput(f"argument {key} must be a string, got {value!r}")
    return value


def resolve_args(name: str, args: dict | None = None) -> tuple[Family, dict]:
    """Every argument of the model `name` with `args` applied, checked and made concrete."""
    family, from_name = find_family(name)
    args = dict(args or {})
    allowed = set(family.defaults) | set(from_name)
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise BadInput(
            f"{name} has no argument {', '.join(unknown)}",
            hint=f"allowed arguments of {name}: {', '.join(sorted(allowed))}",
        )
    resolved = dict(family.defaults)
    resolved.update(from_name)
    for key, value in args.items():
        value = _coerce(key, value, family.hints.get(key))
        if key in from_name and value != from_name[key]:
            raise BadInput(
                f"{name} fixes {key}={from_name[key]!r}, but {key}={value!r} was given",
                hint="drop the argument or change the name",
            )
        resolved[key] = value
    if family.resolve is not None:
        try:
            resolved = family.resolve(resolved)
        except ValueError as exc:
            raise BadInput(f"cannot build {name}: {exc}") from exc
    resolved = _jsonable_args(name, resolved)
    return family, resolved


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
    except (TypeError, ValueError) as exc:
        raise BadInput(f"arguments of {name} are not JSON-serialisable: {exc}") from exc
    return args


def create_model(name: str, **args: Any):
    """Build a registered model; `model.arch` records the name and every resolved argument."""
    family, resolved = resolve_args(name, args)
    builder_args = {k: v for k, v in resolved.items() if k in family.defaults or k in family.hints}
    try:
        model = family.builder(**builder_args)
    except (ValueError, TypeError, ZeroDivisionError) as exc:
        raise BadInput(f"cannot build {name} with {args}: {exc}") from exc
    model.arch = {"name": name, "args": resolved}
    return model


def input_shape_of(name: str, args: dict) -> tuple[int, int, int]:
    _, resolved = resolve_args(name, args)
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
