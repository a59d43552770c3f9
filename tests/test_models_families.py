"""Each family against its reference facts: parameter counts, layer shapes, forward passes."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from mncli.models import create_model, input_shape, list_models
from mncli.models.blocks import SqueezeExcite

ALL = [row["name"] for row in list_models()]
# Real forward passes at native resolution; the rest run on the meta device (shapes only).
FORWARD = [
    "test-mlp",
    "test-cnn",
    "test-resnet",
    "test-mbconv",
    "lenet5",
    "resnet20",
    "resnet56",
    "micronet-cifar",
    "mobilenetv2-cifar",
    "mbconv",
    "efficientnet-b0",
    "mobilenetv2",
]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def shape_multiset(model: nn.Module) -> list[tuple]:
    return sorted(tuple(p.shape) for p in model.parameters())


@pytest.mark.parametrize("name", ALL)
def test_every_model_runs_at_its_native_resolution_on_meta(name):
    with torch.device("meta"):
        model = create_model(name).eval()
        out = model(torch.empty(2, *input_shape(model.arch)))
    assert out.shape == (2, model.arch["args"]["num_classes"])


@pytest.mark.parametrize("name", FORWARD)
def test_forward_pass_at_native_resolution(name):
    model = create_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(1, *input_shape(model.arch)))
    assert out.shape == (1, model.arch["args"]["num_classes"])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "name",
    [
        "wrn-16-2",
        "resnet20",
        "micronet-cifar",
        "mobilenetv2",
        "efficientnet-b0",
        "mbconv",
        "lenet5",
        "test-mlp",
        "test-cnn",
        "test-resnet",
        "test-mbconv",
    ],
)
def test_fashion_mnist_shape_fits_every_family(name):
    model = create_model(name, num_classes=10, in_channels=1, input_size=28).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)


def test_wrn_28_10_is_the_micronet_baseline():
    with torch.device("meta"):
        model = create_model("wrn-28-10")
    assert n_params(model) == 36_536_884
    assert model.layer1[0].conv1.out_channels == 160 and model.layer3[-1].conv2.out_channels == 640
    assert len(model.layer1) == len(model.layer2) == len(model.layer3) == 4


def test_mobilenetv2_1_4_matches_the_torchvision_reference():
    with torch.device("meta"):
        ours = create_model("mobilenetv2-1.4")
        reference = torchvision.models.mobilenet_v2(width_mult=1.4)
    assert n_params(ours) == n_params(reference) == 6_108_776
    assert shape_multiset(ours) == shape_multiset(reference)


def test_mobilenetv2_cifar_keeps_32px_resolution_longer():
    model = create_model("mobilenetv2-cifar")
    assert model.arch["args"]["num_classes"] == 100 and model.arch["args"]["input_size"] == 32
    assert model.stem.conv.stride == (1, 1)
    strides = [block.stride for block in model.blocks]
    assert strides.count(2) == 3  # 32 -> 16 -> 8 -> 4
    assert create_model("mobilenetv2", cifar=True).arch["args"]["input_size"] == 32


@pytest.mark.parametrize("variant", range(8))
def test_efficientnet_matches_the_torchvision_reference(variant):
    with torch.device("meta"):
        ours = create_model(f"efficientnet-b{variant}")
        reference = getattr(torchvision.models, f"efficientnet_b{variant}")()
    assert n_params(ours) == n_params(reference)
    assert shape_multiset(ours) == shape_multiset(reference)
    if variant == 0:
        assert n_params(ours) == 5_288_548


def test_efficientnet_compound_scaling_table():
    expected = {
        0: (1.0, 1.0, 224, 0.2),
        1: (1.0, 1.1, 240, 0.2),
        4: (1.4, 1.8, 380, 0.4),
        7: (2.0, 3.1, 600, 0.5),
    }
    for variant, (width, depth, resolution, dropout) in expected.items():
        with torch.device("meta"):
            args = create_model(f"efficientnet-b{variant}").arch["args"]
        assert (args["width_mult"], args["depth_mult"], args["input_size"], args["dropout"]) == (
            width,
            depth,
            resolution,
            dropout,
        )


def test_efficientnet_uses_swish_and_squeeze_excite_modules():
    model = create_model("efficientnet-b0")
    se = [(n, m) for n, m in model.named_modules() if isinstance(m, SqueezeExcite)]
    assert len(se) == 16 and all(n.endswith(".se") for n, _ in se)
    first = model.blocks[0].se
    assert first.reduce.out_channels == 8 and first.reduce.in_channels == 32  # 0.25 of 32 input channels
    assert isinstance(model.stem.act, nn.SiLU) and isinstance(first.act, nn.SiLU)
    assert not any(isinstance(m, nn.ReLU | nn.ReLU6) for m in model.modules())


def test_micronet_cifar_scaled_by_ec2t_winner():
    with torch.device("meta"):
        base = create_model("micronet-cifar")
        scaled = create_model("micronet-cifar", depth_mult=1.4**3.5, width_mult=1.2**3.5)
    assert [len(getattr(base, f"layer{i}")) for i in (1, 2, 3)] == [7, 7, 7]
    assert [getattr(base, f"layer{i}")[0].conv2.out_channels for i in (1, 2, 3)] == [16, 32, 64]
    assert [len(getattr(scaled, f"layer{i}")) for i in (1, 2, 3)] == [23, 23, 23]
    assert [getattr(scaled, f"layer{i}")[0].conv2.out_channels for i in (1, 2, 3)] == [32, 64, 120]
    assert 7_900_000 < n_params(scaled) < 8_200_000
    assert isinstance(scaled.layer1[0].dropout, nn.Dropout) and scaled.layer1[0].dropout.p == 0.2


def test_cifar_resnet_depths_and_option_a_has_no_shortcut_parameters():
    for depth, blocks in ((20, 3), (32, 5), (44, 7), (56, 9), (110, 18)):
        with torch.device("meta"):
            model = create_model(f"resnet{depth}")
        assert len(model.layer1) == blocks
        assert not any("shortcut" in k for k in model.state_dict())
    keys = set(create_model("resnet20").state_dict())
    assert {
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.conv1.weight",
        "layer3.2.bn2.bias",
        "linear.weight",
    } <= keys
    option_b = create_model("resnet20", shortcut="B")
    assert "layer2.0.shortcut.0.weight" in option_b.state_dict()


def _call_order(model: nn.Module, kinds: tuple) -> list[str]:
    called: list[str] = []
    handles = [
        m.register_forward_hook(lambda mod, i, o, name=n: called.append(name))
        for n, m in model.named_modules()
        if isinstance(m, kinds)
    ]
    with torch.device("meta"):
        model(torch.empty(1, *input_shape(model.arch)))
    for handle in handles:
        handle.remove()
    return called


@pytest.mark.parametrize("name", ALL)
def test_naming_conventions(name):
    with torch.device("meta"):
        model = create_model(name).eval()
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    calls = _call_order(model, (nn.Conv2d, nn.Linear))
    if convs:
        assert calls[0] == convs[0][0], "the first conv must be the stem"
    assert calls[-1] == linears[-1][0], "the last Linear must be the classifier"
    assert linears[-1][1].out_features == model.arch["args"]["num_classes"]
    for conv_name, conv in convs:
        if conv.groups > 1:
            assert conv.groups == conv.in_channels == conv.out_channels
        if ".se." in f".{conv_name}.":
            assert conv_name.rsplit(".", 2)[-2] == "se"
    inverted = any(isinstance(m, SqueezeExcite) or hasattr(m, "project") for m in model.modules())
    if not inverted and not any(conv.groups > 1 for _, conv in convs):
        # Residual families (no depthwise convs, whose 1x1 neighbours are pointwise convs): every
        # 1x1 conv is a residual projection.
        for conv_name, conv in convs:
            if conv.kernel_size == (1, 1):
                assert "shortcut" in conv_name


def test_tiny_models_cover_the_layer_kinds():
    resnet = create_model("test-resnet")
    assert isinstance(resnet.layer1[0].shortcut, nn.Identity)
    assert resnet.layer2[0].shortcut[0].kernel_size == (1, 1)
    mb = create_model("test-mbconv")
    assert not hasattr(mb.blocks[0], "expand") and mb.blocks[0].dw.groups == 8
    assert hasattr(mb.blocks[0], "se") and isinstance(mb.blocks[0].dw_act, nn.SiLU)
    assert isinstance(create_model("test-mbconv", act="hswish").stem.act, nn.Hardswish)
    cnn = create_model("test-cnn")
    kinds = {type(m) for m in cnn.modules()}
    assert {nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.Linear} <= kinds


def test_lenet5_classic_sizes():
    model = create_model("lenet5")
    assert model.fc1.in_features == 16 * 5 * 5 and model.conv1.padding == (2, 2)
    assert n_params(model) == 61_706
    cifar = create_model("lenet5", in_channels=3, input_size=32)
    assert cifar.conv1.padding == (0, 0) and cifar.fc1.in_features == 400


def test_efficientnet_b0_scores_like_the_official_counting():
    """SCORING.md's reference row for EfficientNet-B0 (16-bit freebie, 32-bit adds) depends on every
    layer of the model being the official one; the scorer is the oracle here. Built on the meta device,
    so it is counted dense: a randomly initialised weight that rounds to 0 in float16 would count as
    pruned and make the count depend on the random state the earlier tests left."""
    score_model = pytest.importorskip("mncli.scoring").score_model
    with torch.device("meta"):
        model = create_model("efficientnet-b0").eval()
    report = score_model(model, {}, input_shape=(3, 224, 224), task="imagenet", freebie16=True)
    assert report["params"] == 2_633_770
    assert report["mults"] == 203_311_594 and report["adds"] == 394_550_748
