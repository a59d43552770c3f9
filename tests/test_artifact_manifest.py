"""The manifest: schema (the documented file is the one the code validates with), validator, and
what new_manifest fills in."""

import json
from pathlib import Path

import pytest

from mncli.artifact import new_manifest
from mncli.artifact.manifest import canonical_json, check_manifest, jsonable
from mncli.artifact.schema import SCHEMA, validate
from mncli.errors import BadInput

DOCS = Path(__file__).resolve().parents[1] / "docs" / "manifest.schema.json"


def good():
    m = new_manifest(
        "train", arch={"name": "resnet20", "args": {"num_classes": 10}}, seed=0, command="mncli x"
    )
    return {**m, "content_sha256": "0" * 64}


def test_documented_schema_is_the_schema_in_use():
    assert json.loads(DOCS.read_text()) == SCHEMA


def test_new_manifest_is_valid_and_has_no_times_or_hosts():
    m = good()
    assert validate(m) == []
    assert set(m["env"]) == {"python", "torch", "torchvision", "numpy", "safetensors", "mncli", "device"}
    assert canonical_json(m) == canonical_json(good())  # nothing that changes from run to run


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"format": "mncli/2"}, "manifest.format: expected 'mncli/1'"),
        ({"stage": ""}, "manifest.stage: empty string"),
        ({"seed": 1.5}, "manifest.seed: expected integer or null, got number"),
        ({"seed": True}, "manifest.seed: expected integer or null, got boolean"),
        ({"arch": {"name": "x"}}, "manifest.arch: missing key 'args'"),
        ({"parents": [{"path": "a"}]}, "manifest.parents[0]: missing key 'content_sha256'"),
        ({"lineage": [{"stage": "t", "content_sha256": "xyz"}]}, "manifest.lineage[0].content_sha256: 'xyz'"),
        ({"content_sha256": "A" * 64}, "manifest.content_sha256"),
        (
            {"compression": {"layers": {"c": {"weight": {"format": "fp8", "bits": 8}}}}},
            "manifest.compression.layers.c.weight.format",
        ),
        (
            {"compression": {"layers": {"c": {"act": {"bits": 0}}}}},
            "manifest.compression.layers.c.act.bits: 0",
        ),
        ({"env": {"torch": 2}}, "manifest.env.torch: expected string or null"),
    ],
)
def test_validator_names_the_problem(change, problem):
    errors = validate({**good(), **change})
    assert errors and errors[0].startswith(problem), errors


def test_missing_keys_and_bad_input():
    m = good()
    del m["lineage"]
    assert validate(m) == ["manifest: missing key 'lineage'"]
    with pytest.raises(BadInput, match="invalid mncli manifest: manifest: missing key 'lineage'"):
        check_manifest(m, "x.safetensors")
    assert validate([]) == ["manifest: expected object, got array"]


def test_extras_are_allowed_where_stages_need_them():
    m = {**good(), "search": {"probs": [0.5]}}
    m["compression"] = {"method": "agp", "layers": {"c": {"mask": True, "sparsity": 0.8, "method": "agp"}}}
    assert validate(m) == []


def test_jsonable_and_canonical():
    import numpy as np
    import torch

    value = {"a": (1, 2), "b": float("inf"), "c": np.float32(0.5), "d": torch.tensor(3), 1: Path("x/y")}
    assert jsonable(value) == {"a": [1, 2], "b": None, "c": 0.5, "d": 3, "1": "x/y"}
    assert canonical_json({"b": 1, "a": [1.5, None]}) == '{"a":[1.5,null],"b":1}'
