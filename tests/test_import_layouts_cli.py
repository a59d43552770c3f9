"""`mncli import` and `mncli inspect CHECKPOINT` end to end: the layout detected from the keys and
printed, the artifact's logits identical to the source implementation's, and one-line refusals."""

from __future__ import annotations

import json

import pytest
import torch

import mncli


def _randomise_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Running statistics and affine terms away from their defaults, so BN eps and stats matter."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(c, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(c, generator=generator) * 0.1)
    return model.eval()


def test_torchvision_efficientnet_b1_imports_without_arch_with_identical_logits(tmp_path, run_cli):
    import torchvision

    torch.manual_seed(0)
    source = _randomise_bn(torchvision.models.efficientnet_b1(num_classes=10))
    torch.save(source.state_dict(), tmp_path / "b1.pth")
    result = run_cli("import", tmp_path / "b1.pth", "-o", tmp_path / "b1.safetensors", "--json")
    assert result.code == 0, result.err
    assert (
        result.json["layout"] == "torchvision-efficientnet"
        and result.json["arch"]["name"] == "efficientnet-b1"
    )
    assert "layout: torchvision-efficientnet" in result.err
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(mncli.load(tmp_path / "b1.safetensors")(x), source(x))


@pytest.mark.parametrize("memory_efficient", [True, False])
def test_efficientnet_pytorch_b1_at_its_own_size_imports_with_identical_logits(
    tmp_path, run_cli, memory_efficient
):
    """Its default swish is x * sigmoid(x) (act=swish_mul, what the layout gives); after
    set_swish(memory_efficient=False) it is nn.SiLU, which --arch-opt act=swish reproduces."""
    from efficientnet_pytorch import EfficientNet

    torch.manual_seed(0)
    source = _randomise_bn(EfficientNet.from_name("efficientnet-b1", num_classes=10))
    source.set_swish(memory_efficient=memory_efficient)
    torch.save({"state_dict": source.state_dict(), "epoch": 1}, tmp_path / "b1.pth")
    out = tmp_path / "b1.safetensors"
    act = [] if memory_efficient else ["--arch-opt", "act=swish"]
    result = run_cli("import", tmp_path / "b1.pth", "--arch", "efficientnet-b1", *act, "-o", out, "--json")
    assert result.code == 0, result.err
    assert result.json["layout"] == "efficientnet-pytorch"
    assert result.json["arch"]["args"]["padding"] == "same"
    x = torch.randn(1, 3, 240, 240)  # B1's own resolution, the size its static padding was made for
    with torch.no_grad():
        assert torch.equal(mncli.load(out)(x), source(x))
    scored = run_cli("score", out, "--json")
    assert scored.code == 0 and scored.json["model"]["name"] == "efficientnet-b1"


def test_inspect_lists_keys_and_the_layouts_they_match(tmp_path, run_cli):
    import torchvision

    torch.save(torchvision.models.mobilenet_v2(width_mult=0.5).state_dict(), tmp_path / "mv2.pth")
    result = run_cli("inspect", tmp_path / "mv2.pth", "--json")
    assert result.code == 0, result.err
    info = result.json
    assert info["tensors"] == len(torchvision.models.mobilenet_v2().state_dict())
    assert info["keys"][0] == {"key": "features.0.0.weight", "shape": [16, 3, 3, 3], "dtype": "float32"}
    assert [m["layout"] for m in info["layouts"]] == ["torchvision-mobilenetv2"]
    assert info["layouts"][0]["arch"] == "mobilenetv2" and info["layouts"][0]["args"]["width_mult"] == 0.5
    table = run_cli("inspect", tmp_path / "mv2.pth")
    assert table.code == 0 and "torchvision-mobilenetv2 -> mobilenetv2" in table.out


def test_inspect_with_arch_shows_how_the_keys_fit(tmp_path, run_cli):
    from mncli.models import create_model

    torch.save(create_model("resnet20").state_dict(), tmp_path / "r20.pth")
    result = run_cli("inspect", tmp_path / "r20.pth", "--arch", "resnet32", "--json")
    assert result.code == 0, result.err
    fit = result.json["fit"]
    assert fit["arch"]["name"] == "resnet32" and len(fit["missing"]) > 0 and not fit["unexpected"]
    assert result.json["layouts"] == []


def test_keys_that_already_fit_the_arch_are_taken_as_they_are(tmp_path, run_cli):
    from mncli.models import create_model

    torch.manual_seed(0)
    model = create_model("efficientnet-b0", num_classes=10).eval()
    torch.save(model.state_dict(), tmp_path / "ours.pth")
    out = tmp_path / "ours.safetensors"
    arch = ["--arch", "efficientnet-b0", "--arch-opt", "num_classes=10"]
    result = run_cli("import", tmp_path / "ours.pth", *arch, "-o", out, "--json")
    assert result.code == 0 and result.json["layout"] == "none", result.err
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(mncli.load(out)(x), model(x))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--layout", "no-such-layout"], "unknown checkpoint layout 'no-such-layout'"),
        (["--layout", "none"], "the checkpoint's keys match no known layout, so --arch must name"),
        (["--config", "{missing}"], "config {missing} not found"),
        (["--config", "{notjson}"], "is not JSON"),
    ],
)
def test_bad_layout_options_are_one_line(tmp_path, run_cli, extra, message):
    import torchvision

    torch.save(torchvision.models.mobilenet_v2().state_dict(), tmp_path / "mv2.pth")
    (tmp_path / "notjson.config").write_text("{not json")
    paths = {"missing": tmp_path / "missing.config", "notjson": tmp_path / "notjson.config"}
    argv = [a.format(**paths) for a in extra]
    result = run_cli("import", tmp_path / "mv2.pth", *argv, "-o", tmp_path / "x.safetensors")
    assert result.code == 2 and len(result.err.splitlines()) == 1, result.err
    assert message.format(**paths) in result.err
    assert not (tmp_path / "x.safetensors").exists()


def test_config_for_a_layout_that_needs_none_is_refused(tmp_path, run_cli):
    from mncli.models import create_model

    torch.save(create_model("resnet20").state_dict(), tmp_path / "r20.pth")
    (tmp_path / "net.config").write_text(json.dumps({"name": "x"}))
    config = ["--config", tmp_path / "net.config"]
    result = run_cli(
        "import", tmp_path / "r20.pth", "--arch", "resnet20", *config, "-o", tmp_path / "x.safetensors"
    )
    assert result.code == 2 and "--config is only read for a layout that needs one" in result.err


def test_a_nested_state_dict_wins_over_scalar_tensors_beside_it(tmp_path):
    """ProxylessNAS' checkpoint.pth.tar: {epoch, best_acc (a 0-d tensor), optimizer, state_dict, ...}."""
    from mncli.models import create_model
    from mncli.models.checkpoint import read_state_dict

    weights = create_model("resnet20").state_dict()
    checkpoint = {
        "epoch": 3,
        "best_acc": torch.tensor(71.5),
        "optimizer": {"state": {}},
        "state_dict": weights,
    }
    torch.save(checkpoint, tmp_path / "checkpoint.pth.tar")
    state, _ = read_state_dict(tmp_path / "checkpoint.pth.tar")
    assert list(state) == list(weights) and all(torch.equal(state[k], weights[k]) for k in weights)
