"""The registry: name patterns, argument checking, arch records that rebuild the same model."""

from __future__ import annotations

import json

import pytest
import torch

from mncli.errors import BadInput
from mncli.models import (
    build_model,
    create_model,
    default_dataset,
    families,
    input_shape,
    list_models,
    parse_arch_opts,
    resolve_args,
)

SMALL = ["test-mlp", "test-cnn", "test-resnet", "test-mbconv", "lenet5", "resnet20"]


def test_every_required_family_is_registered():
    names = {row["name"] for row in list_models()}
    required = {
        "wrn-28-10",
        "resnet20",
        "resnet32",
        "resnet44",
        "resnet56",
        "resnet110",
        "micronet-cifar",
        "mobilenetv2",
        "mobilenetv2-1.4",
        "mobilenetv2-cifar",
        "mbconv",
        "lenet5",
        "test-mlp",
        "test-cnn",
        "test-resnet",
        "test-mbconv",
    } | {f"efficientnet-b{i}" for i in range(8)}
    assert required <= names


def test_list_models_rows_count_the_parameters_of_the_default_model():
    rows = {row["name"]: row for row in list_models()}
    for name in ("resnet20", "test-cnn", "lenet5"):
        model = create_model(name)
        assert rows[name]["params"] == sum(p.numel() for p in model.parameters())
        assert tuple(rows[name]["input_shape"]) == input_shape(model.arch)
    assert rows["wrn-28-10"]["params"] == 36_536_884
    assert all(row["params"] < 20_000 for n, row in rows.items() if n.startswith("test-"))
    assert rows["test-cnn"]["default_dataset"] == "synthetic"
    assert rows["efficientnet-b0"]["default_dataset"] == "imagenet"


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(BadInput) as err:
        create_model("resnet-9000-turbo")
    assert "unknown architecture" in err.value.message
    assert "wrn-28-10" in err.value.hint and "efficientnet-b0" in err.value.hint


def test_unknown_argument_lists_the_allowed_ones():
    with pytest.raises(BadInput) as err:
        create_model("resnet20", widht=3)
    assert "widht" in err.value.message
    assert "num_classes" in err.value.hint and "shortcut" in err.value.hint


@pytest.mark.parametrize(
    "name, args",
    [
        ("resnet20", {"num_classes": "many"}),
        ("resnet20", {"num_classes": 2.5}),
        ("resnet20", {"shortcut": "C"}),
        ("resnet21", {}),
        ("wrn-27-10", {}),
        ("wrn-28-10", {"depth": 40}),
        ("efficientnet-b9", {}),
        ("mbconv", {"blocks": ["ir_r1_k4_s1_e6_c16"]}),
        ("mbconv", {"act": "gelu"}),
        ("mobilenetv2", {"cifar": "maybe"}),
        ("lenet5", {"input_size": 8, "padding": 0}),
    ],
)
def test_bad_arguments_are_bad_input(name, args):
    with pytest.raises(BadInput):
        create_model(name, **args)


def test_arguments_from_the_command_line_are_converted():
    args = parse_arch_opts(["num_classes=100", "width_mult=1.4", "cifar=true", "dropout=0"])
    model = create_model("mobilenetv2", **args)
    assert model.arch["args"]["num_classes"] == 100
    assert model.arch["args"]["width_mult"] == 1.4 and model.arch["args"]["cifar"] is True
    assert model.stem.conv.stride == (1, 1)
    strings = parse_arch_opts(["blocks=ir_r1_k3_s1_e1_c16,ir_r1_k3_s2_e6_c24", "num-classes=10"])
    model = create_model("mbconv", **strings)
    assert model.arch["args"]["blocks"] == ["ir_r1_k3_s1_e1_c16", "ir_r1_k3_s2_e6_c24"]
    with pytest.raises(BadInput):
        parse_arch_opts(["width_mult"])


def test_name_fixed_arguments_may_be_repeated_but_not_contradicted():
    model = create_model("mobilenetv2-1.4", width_mult=1.4)
    assert model.arch["args"]["width_mult"] == 1.4
    with pytest.raises(BadInput):
        create_model("mobilenetv2-1.4", width_mult=1.0)


@pytest.mark.parametrize("name", [row["name"] for row in list_models()])
def test_arch_is_json_and_rebuilds_the_same_architecture(name):
    with torch.device("meta"):
        model = create_model(name)
        rebuilt = build_model(json.loads(json.dumps(model.arch)))
    assert rebuilt.arch == model.arch
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    _, resolved = resolve_args(name, model.arch["args"])
    assert resolved == model.arch["args"]
    assert set(resolved) >= {"num_classes", "in_channels", "input_size"}


@pytest.mark.parametrize("name", SMALL)
def test_rebuilt_model_with_the_same_seed_gives_the_same_outputs(name):
    torch.manual_seed(1)
    model = create_model(name).eval()
    torch.manual_seed(1)
    rebuilt = build_model(model.arch).eval()
    x = torch.randn(2, *input_shape(model.arch))
    torch.testing.assert_close(model(x), rebuilt(x), rtol=0, atol=0)


def test_input_shape_and_default_dataset():
    assert input_shape({"name": "efficientnet-b3", "args": {}}) == (3, 300, 300)
    assert input_shape({"name": "lenet5", "args": {}}) == (1, 28, 28)
    assert input_shape(create_model("resnet20", in_channels=1, input_size=28).arch) == (1, 28, 28)
    assert default_dataset("mobilenetv2-cifar") == "cifar100"
    assert default_dataset("resnet20") == "cifar10"
    with pytest.raises(BadInput):
        input_shape({"args": {}})


def test_build_model_resizes_to_recorded_shapes():
    arch = create_model("test-cnn").arch
    arch["shapes"] = {"conv1": [5, 3, 3, 3], "bn1": [5], "conv2": [16, 5, 3, 3]}
    model = build_model(arch).eval()
    assert model.conv1.out_channels == 5 and model.conv2.in_channels == 5
    assert model.arch["shapes"] == arch["shapes"]
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 10)


def test_families_know_their_builders():
    found = families()
    for family in ("wrn", "resnet-cifar", "micronet-cifar", "mobilenetv2", "efficientnet", "mbconv", "lenet"):
        assert family in found
