"""The model zoo: `create_model(name, **args)`, `build_model(arch)`, `list_models()`, `input_shape(arch)`.

Families register themselves in their own module (`@register_family`); every module of this package is
imported on first use, so adding a family is adding a file.
"""

from __future__ import annotations

import copy
from typing import Any

from mncli.errors import BadInput
from mncli.models.registry import (
    create_model,
    default_dataset,
    families,
    input_shape_of,
    list_models,
    register_family,
    resolve_args,
)

__all__ = [
    "build_model",
    "create_model",
    "default_dataset",
    "families",
    "input_shape",
    "list_models",
    "parse_arch_opts",
    "register_family",
    "resolve_args",
]


def _check_arch(arch: Any) -> None:
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str):
        raise BadInput(f"an architecture must be a dict with a name, got {arch!r}")
    if not isinstance(arch.get("args", {}), dict):
        raise BadInput(f"architecture args must be a dict, got {arch.get('args')!r}")


def build_model(arch: dict):
    """Rebuild a model from its recorded architecture (and the tensor shapes of a channel-pruned one);
    for a model of foreign code, a warning when that code changed since (external.check_source)."""
    from mncli.models.external import check_source, is_reference

    _check_arch(arch)
    model = create_model(arch["name"], **arch.get("args", {}))
    if is_reference(arch["name"]):
        check_source(arch, model.arch.get("source"))
    if arch.get("shapes"):
        from mncli.models.reshape import resize_to_shapes

        resize_to_shapes(model, arch["shapes"])
        model.arch = copy.deepcopy(arch)
    return model


def input_shape(arch: dict) -> tuple[int, int, int]:
    """(C, H, W) of the model's native input."""
    _check_arch(arch)
    return input_shape_of(arch["name"], arch.get("args", {}))


def _parse_value(text: str) -> Any:
    import json

    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # not JSON (or nested too deeply): the text itself
        return text


def parse_arch_opts(options: list[str] | None) -> dict[str, Any]:
    """`["width_mult=1.4", "cifar=true"]` -> {"width_mult": 1.4, "cifar": True} (JSON values, else strings).

    The registry converts each value to the builder's argument type, so a comma-separated string is a
    list where the argument is a list (`blocks=ir_r1_k3_s1_e1_c16,ir_r2_k3_s2_e6_c24`)."""
    args: dict[str, Any] = {}
    for option in options or []:
        key, sep, value = option.partition("=")
        if not sep or not key.strip():
            raise BadInput(
                f"--arch-opt needs key=value, got {option!r}", hint="e.g. --arch-opt width_mult=1.4"
            )
        args[key.strip().replace("-", "_")] = _parse_value(value.strip())
    return args
