"""torchvision's EfficientNet and MobileNetV2 and lukemelas' efficientnet_pytorch, converted onto our
efficientnet-bN / mobilenetv2: the source implementations themselves with random weights and random BN
statistics, saved to a .pth, read back, converted, loaded strictly, and giving identical logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mncli.errors import BadInput
from mncli.models import create_model
from mncli.models.blocks import SamePad
from mncli.models.checkpoint import fit_state_dict, read_state_dict
from mncli.models.layouts import detect_layouts, get_layout

torchvision = pytest.importorskip("torchvision")
efficientnet_pytorch = pytest.importorskip("efficientnet_pytorch")
EfficientNet = efficientnet_pytorch.EfficientNet


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN affine parameters and running statistics and random biases (the convs' weights keep
    the source's random initialisation), so that eps, statistics and biases all change the logits."""
    generator = torch.Generator().manual_seed(seed)

    def fill(tensor: torch.Tensor, low: float, high: float) -> None:
        tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                fill(module.weight, 0.5, 1.5)
                fill(module.bias, -0.2, 0.2)
                fill(module.running_mean, -0.2, 0.2)
                fill(module.running_var, 0.5, 2.0)
            elif isinstance(module, nn.Conv2d | nn.Linear) and module.bias is not None:
                fill(module.bias, -0.1, 0.1)
    return model.eval()


def convert_and_build(source: nn.Module, tmp_path, expected_layout: str):
    """Save the source's state dict, read it back, detect and convert it, build our model and load it
    strictly; returns (converted, our model in eval mode)."""
    path = tmp_path / "source.pth"
    torch.save(source.state_dict(), path)
    state, _ = read_state_dict(path)
    assert [layout.name for layout in detect_layouts(state)] == [expected_layout]
    converted = get_layout(expected_layout).convert(state, None)
    ours = create_model(converted.arch, **converted.args)
    assert set(converted.state) == set(ours.state_dict())
    fit_state_dict(ours, converted.state, converted.arch)
    return converted, ours.eval()


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def assert_identical(source: nn.Module, ours: nn.Module, size: int, channels: int = 3) -> None:
    x = torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(1))
    expected, got = logits(source, x), logits(ours, x)
    assert torch.isfinite(expected).all() and expected.std() > 0.05  # a real signal, not zeros
    assert torch.equal(got, expected), f"max |diff| {(got - expected).abs().max().item():.3g}"


# torchvision EfficientNet


@pytest.mark.parametrize("variant, size", [(0, 64), (0, 71), (1, 96)])
def test_torchvision_efficientnet_gives_identical_logits(tmp_path, variant, size):
    torch.manual_seed(variant)
    source = randomize(getattr(torchvision.models, f"efficientnet_b{variant}")(weights=None))
    converted, ours = convert_and_build(source, tmp_path, "torchvision-efficientnet")
    assert converted.arch == f"efficientnet-b{variant}"
    assert converted.args == {"num_classes": 1000, "in_channels": 3, "bn_eps": 1e-5, "bn_momentum": 0.1}
    assert_identical(source, ours, size)


def test_torchvision_efficientnet_class_count_and_bn_eps_matter(tmp_path):
    source = randomize(torchvision.models.efficientnet_b0(weights=None, num_classes=10))
    converted, ours = convert_and_build(source, tmp_path, "torchvision-efficientnet")
    assert converted.args["num_classes"] == 10
    assert_identical(source, ours, 64)
    # our default eps (1e-3, TensorFlow's) is not torchvision's B0: the statistics really count
    default_eps = create_model("efficientnet-b0", num_classes=10).eval()
    default_eps.load_state_dict(converted.state)
    x = torch.randn(2, 3, 64, 64)
    assert not torch.equal(logits(default_eps, x), logits(source, x))


@pytest.mark.parametrize("variant", [2, 3, 4, 5, 6, 7])
def test_torchvision_efficientnet_b2_to_b7_convert_on_shapes(variant):
    with torch.device("meta"):
        source = getattr(torchvision.models, f"efficientnet_b{variant}")(weights=None)
    state = source.state_dict()
    assert [layout.name for layout in detect_layouts(state)] == ["torchvision-efficientnet"]
    converted = get_layout("torchvision-efficientnet").convert(state, None)
    assert converted.arch == f"efficientnet-b{variant}"
    with torch.device("meta"):
        ours = create_model(converted.arch, **converted.args)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in converted.state.items()
    }
    source_bn = [(m.eps, m.momentum) for m in source.modules() if isinstance(m, nn.BatchNorm2d)]
    our_bn = [(m.eps, m.momentum) for m in ours.modules() if isinstance(m, nn.BatchNorm2d)]
    assert our_bn == source_bn  # 1e-5 / 0.1 for B2-B4, 1e-3 / 0.01 for B5-B7


# torchvision MobileNetV2


@pytest.mark.parametrize("width, size", [(1.0, 64), (0.5, 67), (1.4, 64)])
def test_torchvision_mobilenetv2_gives_identical_logits(tmp_path, width, size):
    torch.manual_seed(3)
    source = randomize(torchvision.models.mobilenet_v2(weights=None, width_mult=width))
    converted, ours = convert_and_build(source, tmp_path, "torchvision-mobilenetv2")
    assert converted.arch == "mobilenetv2"
    assert converted.args == {"num_classes": 1000, "in_channels": 3, "width_mult": width}
    assert_identical(source, ours, size)


@pytest.mark.parametrize("width, found", [(0.35, 0.35), (0.75, 0.75), (1.3, 1.3), (2.0, 2.0), (0.123, 0.12)])
def test_torchvision_mobilenetv2_width_comes_from_the_shapes(width, found):
    # 0.123 and 0.12 give every layer the same channel count, so the same model: the simpler is named
    with torch.device("meta"):
        source = torchvision.models.mobilenet_v2(weights=None, width_mult=width, num_classes=7)
    converted = get_layout("torchvision-mobilenetv2").convert(source.state_dict(), None)
    assert converted.args["width_mult"] == found and converted.args["num_classes"] == 7


# lukemelas efficientnet_pytorch


@pytest.mark.parametrize("variant", [0, 1])
def test_efficientnet_pytorch_gives_identical_logits_at_its_image_size(tmp_path, variant):
    torch.manual_seed(variant)
    source = randomize(EfficientNet.from_name(f"efficientnet-b{variant}", image_size=64))
    converted, ours = convert_and_build(source, tmp_path, "efficientnet-pytorch")
    assert converted.arch == f"efficientnet-b{variant}"
    assert converted.args == {"num_classes": 1000, "in_channels": 3, "padding": "same", "act": "swish_mul"}
    assert_identical(source, ours, 64)


def test_efficientnet_pytorch_b0_at_its_native_224_px(tmp_path):
    source = randomize(EfficientNet.from_name("efficientnet-b0"))
    _, ours = convert_and_build(source, tmp_path, "efficientnet-pytorch")
    assert_identical(source, ours, 224)


def test_efficientnet_pytorch_dynamic_padding_at_odd_sizes_and_other_channels(tmp_path):
    # image_size=None: efficientnet_pytorch pads from each input's size, as ours always does
    source = randomize(
        EfficientNet.from_name("efficientnet-b0", image_size=None, num_classes=10, in_channels=1)
    )
    converted, ours = convert_and_build(source, tmp_path, "efficientnet-pytorch")
    assert (converted.args["num_classes"], converted.args["in_channels"]) == (10, 1)
    for size in (45, 50):
        assert_identical(source, ours, size, channels=1)


def test_same_padding_puts_the_odd_pixel_bottom_right():
    pad = SamePad(kernel=3, stride=2)
    x = torch.ones(1, 1, 4, 5)
    padded = pad(x)  # 4 rows: 1 zero row (below); 5 columns: 2 zero columns (one each side)
    assert padded.shape == (1, 1, 5, 7)
    assert padded[0, 0, -1].sum() == 0 and padded[0, 0, 0].sum() == 5
    assert padded[0, 0, :, 0].sum() == 0 and padded[0, 0, :, -1].sum() == 0
    assert SamePad(kernel=5, stride=1)(x).shape == (1, 1, 8, 9)


@pytest.mark.parametrize("variant", [2, 3, 4, 5, 6, 7])
def test_efficientnet_pytorch_b2_to_b7_convert_on_shapes(variant):
    with torch.device("meta"):
        source = EfficientNet.from_name(f"efficientnet-b{variant}")
    state = source.state_dict()
    assert [layout.name for layout in detect_layouts(state)] == ["efficientnet-pytorch"]
    converted = get_layout("efficientnet-pytorch").convert(state, None)
    assert converted.arch == f"efficientnet-b{variant}"
    with torch.device("meta"):
        ours = create_model(converted.arch, **converted.args)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in converted.state.items()
    }


# detection and refusals


@pytest.mark.parametrize(
    "arch, args",
    [
        ("efficientnet-b0", {}),
        ("efficientnet-b1", {"padding": "same", "act": "swish_mul"}),
        ("mobilenetv2", {}),
        ("mobilenetv2-cifar", {}),
    ],
)
def test_no_layout_claims_our_own_state_dicts(arch, args):
    with torch.device("meta"):
        state = create_model(arch, **args).state_dict()
    assert detect_layouts(state) == []


def _meta_state(build) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return build().state_dict()


@pytest.mark.parametrize(
    "layout, build, drop, message",
    [
        ("torchvision-efficientnet", torchvision.models.efficientnet_b0, "features.8.0.weight", "head conv"),
        ("torchvision-efficientnet", torchvision.models.efficientnet_b0, "features.7.", "no EfficientNet-B0"),
        ("torchvision-efficientnet", torchvision.models.efficientnet_b1, "features.4.1.block.1.", "missing"),
        ("torchvision-mobilenetv2", torchvision.models.mobilenet_v2, "features.17.", "16 inverted-residual"),
        ("torchvision-mobilenetv2", torchvision.models.mobilenet_v2, "classifier.1.weight", "classifier"),
        (
            "efficientnet-pytorch",
            lambda: EfficientNet.from_name("efficientnet-b0"),
            "_blocks.15.",
            "15 blocks",
        ),
        (
            "efficientnet-pytorch",
            lambda: EfficientNet.from_name("efficientnet-b0"),
            "_fc.weight",
            "_fc.weight",
        ),
        (
            "efficientnet-pytorch",
            lambda: EfficientNet.from_name("efficientnet-b0"),
            "_blocks.3._bn1.",
            "missing",
        ),
    ],
)
def test_truncated_state_dicts_are_one_line_bad_input(layout, build, drop, message):
    state = {k: v for k, v in _meta_state(build).items() if not k.startswith(drop)}
    with pytest.raises(BadInput) as caught:
        get_layout(layout).convert(state, None)
    assert message in caught.value.message and "\n" not in caught.value.message


@pytest.mark.parametrize(
    "build",
    [
        torchvision.models.resnet18,
        torchvision.models.efficientnet_v2_s,
        torchvision.models.mobilenet_v3_small,
    ],
)
def test_foreign_state_dicts_are_detected_by_none_and_refused_by_each(build):
    state = _meta_state(build)
    names = ["torchvision-efficientnet", "torchvision-mobilenetv2", "efficientnet-pytorch"]
    assert not [layout.name for layout in detect_layouts(state) if layout.name in names]
    for name in names:
        with pytest.raises(BadInput) as caught:
            get_layout(name).convert(state, None)
        assert name in caught.value.message and "\n" not in caught.value.message


def test_a_renamed_key_that_is_not_the_layouts_is_named(tmp_path):
    state = _meta_state(torchvision.models.efficientnet_b0)
    state["features.2.0.extra.weight"] = state.pop("features.2.0.block.3.1.weight")
    with pytest.raises(BadInput, match="features.2.0.extra.weight"):
        get_layout("torchvision-efficientnet").convert(state, None)


def test_efficientnet_pytorch_b8_is_its_layout_but_no_variant_of_ours():
    state = _meta_state(lambda: EfficientNet.from_name("efficientnet-b8"))
    assert [layout.name for layout in detect_layouts(state)] == ["efficientnet-pytorch"]
    with pytest.raises(BadInput, match="stem 72, 61 blocks and head 2816: no EfficientNet-B0..B7"):
        get_layout("efficientnet-pytorch").convert(state, None)


# what the other tools see of the padding and activation options


TINY = {"num_classes": 10, "input_size": 64, "width_mult": 0.25, "depth_mult": 0.25}


def test_same_padding_and_mul_swish_score_as_the_defaults():
    from mncli.scoring import score_model

    def score(**extra):
        model = create_model("efficientnet-b0", **TINY, **extra).eval()
        return score_model(model, {}, input_shape=(3, 64, 64), task="imagenet")

    plain, ported = score(), score(padding="same", act="swish_mul")
    assert (ported["params"], ported["mults"], ported["adds"]) == (
        plain["params"],
        plain["mults"],
        plain["adds"],
    )


def test_same_padding_exports_to_onnx_at_the_models_logits(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from mncli.bundle import bundle_from_arch, save_bundle
    from mncli.stages.export import ExportConfig, run

    bundle = bundle_from_arch("efficientnet-b0", {**TINY, "padding": "same", "act": "swish_mul"})
    randomize(bundle.model)
    save_bundle(bundle, tmp_path / "same.safetensors", stage="import")
    result = run(ExportConfig(input=tmp_path / "same.safetensors", out=tmp_path / "same.onnx", format="onnx"))
    assert result["check"]["top1_agreement"] == 1.0 and result["check"]["max_abs_diff"] < 1e-4
