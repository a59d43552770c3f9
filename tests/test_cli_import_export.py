"""`mncli import` / `mncli export`: foreign checkpoints in, plain PyTorch out, identical logits."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import tiny_artifact
from mncli.models import create_model, input_shape


# An independent minimal CIFAR ResNet-20 in the style of the widely used public checkpoints
# (option-A shortcuts through a parameter-free lambda, F.relu, avg_pool2d): the state dicts people have.
class _Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class _Block(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            pad = c_out // 4
            self.shortcut = _Lambda(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad), "constant", 0))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class _ReferenceResNet20(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        c_in = 16
        for i, (c_out, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
            blocks = []
            for j in range(3):
                blocks.append(_Block(c_in, c_out, stride if j == 0 else 1))
                c_in = c_out
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3]).view(out.size(0), -1)
        return self.linear(out)


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(3)
    model = _ReferenceResNet20()
    with torch.no_grad():  # trained-looking BN statistics so eval mode is not the identity
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    return model.eval()


def test_resnet20_state_dict_imports_with_identical_logits(tmp_path, run_cli, reference):
    from mncli.bundle import load_bundle

    checkpoint = tmp_path / "resnet20.th"
    wrapped = {f"module.{k}": v for k, v in reference.state_dict().items()}
    torch.save({"epoch": 200, "best_prec1": 91.7, "state_dict": wrapped}, checkpoint)
    out = tmp_path / "r20.safetensors"
    result = run_cli("--quiet", "import", checkpoint, "--arch", "resnet20", "-o", out)
    assert result.code == 0, result.err
    assert result.out.strip() == str(out)
    bundle = load_bundle(out)
    assert bundle.arch["name"] == "resnet20"
    assert bundle.manifest["stage"] == "import"
    assert bundle.manifest["params"]["stripped_prefixes"] == ["module."]
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(bundle.model(x), reference(x), rtol=0, atol=0)


def test_import_json_reports_the_artifact(tmp_path, run_cli):
    model = create_model("test-cnn", num_classes=4)
    checkpoint = tmp_path / "cnn.pt"
    torch.save({"model": model.state_dict()}, checkpoint)
    out = tmp_path / "cnn.safetensors"
    opts = ["--arch", "test-cnn", "--arch-opt", "num_classes=4"]
    run = run_cli("import", checkpoint, *opts, "-o", out, "--json")
    assert run.code == 0, run.err
    result = run.json
    assert result["arch"]["args"]["num_classes"] == 4
    assert result["params"] == sum(p.numel() for p in model.parameters())
    assert result["output"] == str(out) and out.exists()


def test_mismatches_are_reported_and_nothing_is_written(tmp_path, run_cli, reference):
    checkpoint = tmp_path / "resnet20.th"
    torch.save(reference.state_dict(), checkpoint)
    out = tmp_path / "x.safetensors"
    result = run_cli("import", checkpoint, "--arch", "resnet32", "-o", out)
    assert result.code == 2 and result.out == ""
    assert "60 missing" in result.err and "layer1.3.conv1.weight" in result.err
    result = run_cli("import", checkpoint, "--arch", "resnet20", "--arch-opt", "num_classes=100", "-o", out)
    assert result.code == 2
    assert "linear.weight" in result.err and "[10, 64]" in result.err and "num_classes=10" in result.err
    state = dict(reference.state_dict())
    state["extra.weight"] = torch.zeros(3)
    torch.save(state, checkpoint)
    result = run_cli("import", checkpoint, "--arch", "resnet20", "-o", out)
    assert result.code == 2 and "unexpected" in result.err and "extra.weight" in result.err
    assert not out.exists()


class _NotATensor:
    pass


@pytest.mark.parametrize("kind", ["missing", "garbage", "pickled-object", "no-tensors", "unknown-arch"])
def test_bad_inputs_exit_2_without_traceback(tmp_path, run_cli, kind):
    checkpoint = tmp_path / "ckpt.pt"
    arch = "test-cnn"
    if kind == "garbage":
        checkpoint.write_bytes(b"\x00not a checkpoint at all" * 10)
    elif kind == "pickled-object":
        with open(checkpoint, "wb") as handle:
            pickle.dump({"model": _NotATensor()}, handle)
    elif kind == "no-tensors":
        torch.save({"epoch": 3, "lr": 0.1}, checkpoint)
    elif kind == "unknown-arch":
        torch.save(create_model("test-cnn").state_dict(), checkpoint)
        arch = "resnet-9000"
    result = run_cli("import", checkpoint, "--arch", arch, "-o", tmp_path / "o.safetensors")
    assert result.code == 2, result.err
    assert result.out == "" and "Traceback" not in result.err and "error:" in result.err


def _artifact(tmp_path: Path, name: str):
    """A seeded zoo model's artifact and the same model in memory (eval mode)."""
    path = tiny_artifact(tmp_path / f"{name}.safetensors", name, stage="test")
    torch.manual_seed(0)  # tiny_artifact's seed: the weights it saved
    return create_model(name).eval(), path


def test_export_state_dict_loads_with_weights_only_and_reimports(tmp_path, run_cli):
    model, art = _artifact(tmp_path, "test-resnet")
    out = tmp_path / "model.pt"
    result = run_cli("export", art, "-o", out, "--json")
    assert result.code == 0, result.err
    assert result.json["format"] == "state-dict"
    state = torch.load(out, weights_only=True)
    fresh = create_model("test-resnet").eval()
    fresh.load_state_dict(state)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    again = tmp_path / "again.safetensors"
    result = run_cli("import", out, "--arch", "test-resnet", "-o", again)
    assert result.code == 0, result.err
    from mncli.bundle import load_bundle

    torch.testing.assert_close(load_bundle(again).model(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("fmt, suffix", [("torchscript", ".ts"), ("torch-export", ".pt2")])
def test_export_programs_run_without_mncli(tmp_path, run_cli, fmt, suffix):
    model, art = _artifact(tmp_path, "test-mbconv")
    out = tmp_path / f"model{suffix}"
    result = run_cli("export", art, "-o", out, "--format", fmt)
    assert result.code == 0, result.err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        program = torch.jit.load(out) if fmt == "torchscript" else torch.export.load(out).module()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(program(x), model(x), rtol=1e-5, atol=1e-6)
    assert not list(tmp_path.glob(".*.tmp*"))


def test_export_refuses_bad_format_and_missing_input(tmp_path, run_cli):
    _, art = _artifact(tmp_path, "test-mlp")
    result = run_cli("export", art, "-o", tmp_path / "m.onnx", "--format", "onxx")
    assert result.code == 2 and "onxx" in result.err
    assert run_cli("export", tmp_path / "nope.safetensors", "-o", tmp_path / "m.pt").code == 2


@pytest.mark.parametrize("name", ["test-mlp", "test-cnn", "test-resnet", "test-mbconv", "lenet5", "resnet20"])
def test_models_round_trip_through_an_artifact(tmp_path, name):
    from mncli.bundle import load_bundle

    model, path = _artifact(tmp_path, name)
    loaded = load_bundle(path).model
    x = torch.randn(2, *input_shape(model.arch))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_models_command_lists_the_zoo(run_cli):
    result = run_cli("models", "--json")
    assert result.code == 0
    rows = {row["name"]: row for row in result.json["models"]}
    assert rows["wrn-28-10"]["params"] == 36_536_884
    assert rows["mobilenetv2-1.4"]["params"] == 6_108_776
    result = run_cli("models", "--family", "resnet-cifar")
    assert result.code == 0 and "resnet110" in result.out and "wrn" not in result.out
    result = run_cli("models", "--family", "nope")
    assert result.code == 2 and "known" in result.err


def test_export_keeps_activation_quantizers(tmp_path, run_cli):
    from mncli.bundle import Bundle, save_bundle
    from mncli.models.quantized import install_act_quantizers

    model = create_model("test-cnn").eval()
    specs = {"conv2": {"act": {"bits": 4, "signed": False, "method": "lsq"}}}
    install_act_quantizers(model, specs)
    with torch.no_grad():
        model.conv2.act_quant.scale.fill_(0.05)
    art = tmp_path / "aq.safetensors"
    save_bundle(Bundle(model=model, arch=model.arch, specs=specs), art, stage="test")
    x = torch.randn(2, 3, 16, 16)
    for fmt, name in (("state-dict", "aq.pt"), ("torch-export", "aq.pt2")):
        result = run_cli("export", art, "-o", tmp_path / name, "--format", fmt)
        assert result.code == 0, result.err
    state = torch.load(tmp_path / "aq.pt", weights_only=True)
    assert torch.equal(state["conv2.act_quant.scale"], model.conv2.act_quant.scale)
    program = torch.export.load(tmp_path / "aq.pt2").module()
    with torch.no_grad():
        torch.testing.assert_close(program(x), model(x), rtol=0, atol=0)
