"""The manifest's JSON Schema (docs/manifest.schema.json is this dict, written out) and a small
validator for the subset of JSON Schema it uses: type, const, enum, required, properties,
additionalProperties, items, minimum, maximum, minLength, pattern. A dependency on `jsonschema` for
that little would cost more than these sixty lines."""

from __future__ import annotations

import re
from typing import Any

SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
BITS = {"type": "integer", "minimum": 1, "maximum": 32}
# int weights may have fractional bits (2.5: a grid of floor(2**2.5) = 5 levels, recorded as `levels`)
WEIGHT_BITS = {"type": "number", "minimum": 1, "maximum": 32}

LAYER_SPEC = {
    "type": "object",
    "description": "What a layer is (docs/architecture.md); keys beyond these are a stage's extras.",
    "properties": {
        "weight": {
            "type": "object",
            "required": ["format", "bits"],
            "properties": {
                "format": {"enum": ["float", "ternary", "int"]},
                "bits": WEIGHT_BITS,
                "levels": {"type": "integer", "minimum": 2, "maximum": 65536},
                "wp": {"type": "number"},
                "wn": {"type": "number"},
                "per_channel": {"type": "boolean"},
            },
        },
        "mask": {"type": "boolean"},
        "act": {
            "type": "object",
            "required": ["bits"],
            "properties": {"bits": BITS, "signed": {"type": "boolean"}, "method": {"type": "string"}},
        },
        "acc_bits": {"type": "integer", "minimum": 1, "maximum": 64},
    },
}

ENV_KEYS = ("python", "torch", "torchvision", "numpy", "safetensors", "mncli", "device")

ANCESTOR = {
    "type": "object",
    "required": ["stage", "content_sha256"],
    "properties": {"stage": {"type": "string"}, "content_sha256": SHA256, "path": {"type": "string"}},
}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "mncli artifact manifest (format mncli/1)",
    "type": "object",
    "required": [
        "format",
        "stage",
        "mncli_version",
        "command",
        "params",
        "seed",
        "arch",
        "parents",
        "lineage",
        "data",
        "metrics",
        "compression",
        "env",
        "content_sha256",
    ],
    "properties": {
        "format": {"const": "mncli/1"},
        "stage": {"type": "string", "minLength": 1},
        "mncli_version": {"type": "string", "minLength": 1},
        "command": {"type": ["string", "null"]},
        "params": {"type": "object"},
        "seed": {"type": ["integer", "null"]},
        "arch": {
            "type": "object",
            "required": ["name", "args"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "args": {"type": "object"},
                "shapes": {"type": "object"},
            },
        },
        "parents": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["path", "content_sha256"],
                "properties": {
                    "path": {"type": "string"},
                    "content_sha256": SHA256,
                    "stage": {"type": "string"},
                },
            },
        },
        "lineage": {"type": "array", "items": ANCESTOR},
        "data": {"type": ["object", "null"]},
        "metrics": {"type": "object"},
        "compression": {
            "type": "object",
            "properties": {"layers": {"type": "object", "additionalProperties": LAYER_SPEC}},
        },
        "env": {
            "type": "object",
            "properties": {k: {"type": ["string", "null"]} for k in ENV_KEYS},
        },
        "content_sha256": SHA256,
    },
}

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def _type_name(value: Any) -> str:
    return next(
        (
            t
            for t in ("null", "boolean", "integer", "number", "string", "array", "object")
            if _TYPES[t](value)
        ),
        type(value).__name__,
    )


def validate(value: Any, schema: dict = SCHEMA, where: str = "manifest") -> list[str]:
    """All the ways `value` breaks `schema`, as 'where: problem' strings (empty when it conforms)."""
    if "const" in schema and value != schema["const"]:
        return [f"{where}: expected {schema['const']!r}, got {value!r}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}: expected one of {schema['enum']}, got {value!r}"]
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[t](value) for t in types):
            return [f"{where}: expected {' or '.join(types)}, got {_type_name(value)}"]
    errors: list[str] = []
    if isinstance(value, dict):
        errors += [f"{where}: missing key {k!r}" for k in schema.get("required", []) if k not in value]
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in schema.get("properties", {}):
                errors += validate(item, schema["properties"][key], f"{where}.{key}")
            elif extra is False:
                errors.append(f"{where}: unexpected key {key!r}")
            elif isinstance(extra, dict):
                errors += validate(item, extra, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += validate(item, schema["items"], f"{where}[{i}]")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{where}: empty string")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} is below {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: {value} is above {schema['maximum']}")
    return errors
