"""Architectures from outside the zoo (models/external.py): the user's own file or module, torchvision
and timm models by name, and families that installed packages declare as entry points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mncli.errors import BadInput
from mncli.models import build_model, create_model

SYN = "synthetic:classes=4,shape=1x8x8,train=128,test=32"
FAST = ["--epochs", "1", "--batch-size", "32"]

USER_NET = '''
"""A user's network: three convs and a classifier."""
from torch import nn


def build(num_classes: int = 10, width: int = 8, in_channels: int = 1):
    """Three 3x3 convs and a linear classifier."""
    layers = []
    for c_in in (in_channels, width, width):
        layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
'''


def _mncli(*argv, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m mncli ARGV` in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "mncli", *map(str, argv)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


@pytest.fixture
def user_file(tmp_path) -> Path:
    path = tmp_path / "project" / "mynet.py"
    path.parent.mkdir()
    path.write_text(USER_NET)
    return path


def test_a_users_file_goes_through_every_stage_each_in_its_own_process(tmp_path, user_file):
    """train -> prune -> quantize -> score -> export, and the Python API's load, each in a new process;
    the later ones from another folder, where only the recorded absolute path finds the file."""
    project, elsewhere = user_file.parent, tmp_path / "elsewhere"
    elsewhere.mkdir()
    bits, arch = (
        ["--weight-bits", "8", "--act-bits", "8"],
        ["--arch", "mynet.py:build", "--arch-opt", "width=8"],
    )
    steps = [
        (project, ["train", *arch, "-d", SYN, *FAST, "-o", "a.safetensors"]),
        (project, ["verify", "a.safetensors"]),
        (elsewhere, ["prune", project / "a.safetensors", "--sparsity", "0.5", *FAST, "-o", "p.safetensors"]),
        (elsewhere, ["quantize", "p.safetensors", *bits, *FAST, "-o", "q.safetensors"]),
        (elsewhere, ["score", "q.safetensors", "--json"]),
        (elsewhere, ["export", "q.safetensors", "-o", "q.onnx"]),
    ]  # fmt: skip
    for cwd, argv in steps:
        done = _mncli(*argv, cwd=cwd)
        assert done.returncode == 0, (argv, done.stderr)
    score = json.loads(_mncli("score", "q.safetensors", "--json", cwd=elsewhere).stdout)
    assert score["model"]["name"] == f"{user_file}:build"
    assert score["params"] > 0 and (elsewhere / "q.onnx").stat().st_size > 0
    manifest = json.loads(_mncli("inspect", "q.safetensors", "--json", cwd=elsewhere).stdout)
    assert manifest["arch"]["source"] == {
        "file": str(user_file),
        "sha256": __import__("hashlib").sha256(user_file.read_bytes()).hexdigest(),
    }
    assert manifest["arch"]["args"] == {"num_classes": 4, "in_channels": 1, "input_size": 8, "width": 8}
    api = subprocess.run(
        [sys.executable, "-c", "import mncli; m = mncli.load('q.safetensors'); print(type(m).__name__)"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert api.returncode == 0 and api.stdout.strip() == "Sequential", api.stderr


@pytest.fixture
def trained_user_model(tmp_path, user_file) -> Path:
    """A saved model of the user's file, written in this process."""
    from mncli.bundle import bundle_from_arch, save_bundle

    out = tmp_path / "m.safetensors"
    save_bundle(
        bundle_from_arch(f"{user_file}:build", {"num_classes": 4, "input_size": 8}), out, stage="train"
    )
    return out


def test_a_changed_file_is_a_warning_naming_it_even_with_q(tmp_path, user_file, trained_user_model):
    user_file.write_text(USER_NET + "\n# an edit that changes nothing the weights need\n")
    done = _mncli("score", trained_user_model, "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "warning:" in done.stderr and str(user_file) in done.stderr and "changed" in done.stderr


def test_a_changed_file_the_weights_no_longer_fit_is_exit_2(tmp_path, user_file, trained_user_model):
    user_file.write_text(
        USER_NET.replace("nn.Linear(width, num_classes)", "nn.Linear(width, 2 * num_classes)")
    )
    done = _mncli("score", trained_user_model, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert str(trained_user_model) in done.stderr and "gives 8 outputs, but num_classes is 4" in done.stderr


def test_a_missing_file_is_exit_2_naming_it(tmp_path, user_file, trained_user_model):
    user_file.unlink()
    done = _mncli("score", trained_user_model, cwd=tmp_path)
    assert done.returncode == 2 and f"architecture file {user_file} not found" in done.stderr
    done = _mncli(
        "train", "--arch", "nowhere.py:build", "-d", SYN, *FAST, "-o", "x.safetensors", cwd=tmp_path
    )
    assert done.returncode == 2 and "architecture file nowhere.py not found" in done.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_a_package_module_builder_and_a_module_class(tmp_path, monkeypatch):
    package = tmp_path / "usernets"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "small.py").write_text(
        USER_NET
        + textwrap.dedent(
            '''
            class Net(nn.Module):
                """A class is a builder too."""

                def __init__(self, num_classes: int = 10, in_channels: int = 3):
                    super().__init__()
                    self.body = build(num_classes, 4, in_channels)

                def forward(self, x):
                    return self.body(x)
            '''
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = create_model("usernets.small:build", width="6", num_classes=3, in_channels=1, input_size=8)
    assert (
        model.arch["name"] == "usernets.small:build" and model.arch["args"]["width"] == 6
    )  # by its annotation
    assert model.arch["source"]["module"] == "usernets.small"
    net = create_model("usernets.small:Net", num_classes=5, input_size=16)
    assert net(torch.zeros(1, 3, 16, 16)).shape == (1, 5)
    rebuilt = build_model(model.arch)
    assert [tuple(p.shape) for p in rebuilt.parameters()] == [tuple(p.shape) for p in model.parameters()]


@pytest.mark.parametrize(
    "reference, message",
    [
        ("os:system", "refusing --arch os:system"),
        ("subprocess:run", "refusing --arch subprocess:run"),
        ("builtins:eval", "refusing --arch builtins:eval"),
        ("torch.hub:load", "refusing --arch torch.hub:load"),
        ("mynet.py:nn", "is not a Python function or nn.Module class"),
        ("mynet.py:nope", "has no 'nope'"),
        ("mynet.py:", "bad architecture reference"),
        ("bad-module!:x", "bad module name"),
        ("no_such_module_anywhere:build", "cannot import no_such_module_anywhere"),
        ("torchvision:resnet19", "torchvision has no classification model 'resnet19'"),
        ("torchvision:", "names no model"),
        ("timm:not_a_model", "timm has no classification model"),
    ],
)
def test_references_that_name_nothing_buildable_are_bad_input(user_file, monkeypatch, reference, message):
    monkeypatch.chdir(user_file.parent)
    with pytest.raises(BadInput) as info:
        create_model(reference)
    assert message in info.value.message


def test_a_manifest_naming_the_standard_library_runs_nothing(tmp_path, run_cli):
    """A forged artifact whose arch is os:system: every reader refuses it and nothing runs."""
    from mncli.bundle import Bundle, save_bundle

    marker = tmp_path / "pwned"
    model = create_model("test-cnn")
    forged = {"name": "os:system", "args": {"command": f"touch {marker}"}}
    save_bundle(Bundle(model=model, arch=forged), tmp_path / "f.safetensors", stage="train")
    for argv in (
        ["score", "f.safetensors"],
        ["eval", "f.safetensors", "-d", SYN],
        ["export", "f.safetensors", "-o", "f.onnx"],
    ):
        result = run_cli(*[str(tmp_path / a) if a.endswith(".safetensors") else a for a in argv])
        assert result.code == 2 and "refusing --arch os:system" in result.err, result.err
    assert not marker.exists()


def test_a_builder_that_needs_an_argument_says_which(user_file, monkeypatch):
    user_file.write_text(
        USER_NET.replace("num_classes: int = 10, width: int = 8", "width: int, num_classes: int = 10")
    )
    monkeypatch.chdir(user_file.parent)
    with pytest.raises(BadInput) as info:
        create_model("mynet.py:build")
    assert info.value.message.endswith("needs width") and info.value.hint == "--arch-opt width=..."


def test_a_file_that_fails_to_import_is_one_line(user_file, monkeypatch):
    user_file.write_text("import no_such_dependency\n")
    monkeypatch.chdir(user_file.parent)
    with pytest.raises(
        BadInput, match="cannot import .*ModuleNotFoundError: No module named 'no_such_dependency'"
    ):
        create_model("mynet.py:build")


# ---------------------------------------------------------------------------- torchvision and timm


def test_torchvision_and_timm_models_by_name_are_scored(run_cli):
    for name, classes in (("torchvision:mobilenet_v3_small", 10), ("timm:resnet18", 100)):
        result = run_cli(
            "score", "--arch", name, "--arch-opt", f"num_classes={classes}", "--dataset", "imagenet", "--json"
        )
        assert result.code == 0, result.err
        report = result.json
        model = create_model(name, num_classes=classes)
        assert report["params"] == pytest.approx(sum(p.numel() for p in model.parameters()), rel=0.01)
        assert report["model"]["name"] == name and report["mults"] > 1e6


def test_torchvision_models_refuse_downloads_and_other_channel_counts():
    with pytest.raises(BadInput, match="mncli never downloads weights"):
        create_model("torchvision:resnet18", weights="IMAGENET1K_V1")
    with pytest.raises(BadInput, match="takes 3-channel images, not 1"):
        create_model("torchvision:resnet18", in_channels=1)
    with pytest.raises(BadInput, match="mncli never downloads weights"):
        create_model("timm:resnet18", pretrained=True)


def test_torchvision_arguments_pass_through_and_are_recorded():
    model = create_model("torchvision:mobilenet_v2", num_classes=7, width_mult=0.5, dropout=0.1)
    assert model.arch["args"] == {
        "num_classes": 7,
        "in_channels": 3,
        "input_size": 224,
        "width_mult": 0.5,
        "dropout": 0.1,
    }
    assert model.arch["source"]["package"] == "torchvision"
    assert build_model(model.arch).classifier[1].out_features == 7
    assert (
        create_model("torchvision:inception_v3", aux_logits=False, init_weights=False).arch["args"][
            "input_size"
        ]
        == 299
    )


def test_models_that_compute_while_building_still_build_on_the_meta_device():
    """torchvision's RegNet computes its widths with tensors: built on the CPU, then moved to meta."""
    with torch.device("meta"):
        model = create_model("torchvision:regnet_x_400mf")
    assert all(p.is_meta for p in model.parameters())


def test_a_torchvision_checkpoint_imports_with_its_keys_as_they_are(tmp_path, run_cli):
    import torchvision

    torch.manual_seed(0)
    source = torchvision.models.resnet18(num_classes=10).eval()
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, tmp_path / "r18.pth")
    arch = ["--arch", "torchvision:resnet18", "--arch-opt", "num_classes=10"]
    result = run_cli("import", tmp_path / "r18.pth", *arch, "-o", tmp_path / "r18.safetensors", "--json")
    assert result.code == 0, result.err
    assert result.json["layout"] == "none"
    import mncli

    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(mncli.load(tmp_path / "r18.safetensors")(x), source(x))


def test_package_listing_rows():
    from mncli.models.external import _package_row

    row = _package_row("torchvision", "resnet18")
    assert row["params"] == 11_689_512 and row["input_shape"] == [3, 224, 224]
    big = _package_row("torchvision", "regnet_y_128gf")
    assert big["params"] is None and "at most 500,000,000" in big["description"]
    assert _package_row("timm", "resnet18")["name"] == "timm:resnet18"


# ------------------------------------------------------------------------------------- entry points


def _plugin(site: Path, name: str, value: str, module: str, code: str) -> None:
    """An installed distribution with one entry point in the `mncli.models` group."""
    (site / f"{module}.py").write_text(textwrap.dedent(code))
    info = site / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[mncli.models]\n{name} = {value}\n")


def test_installed_packages_register_families_through_entry_points(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    _plugin(
        site,
        "plug-net",
        "plugnet:plug_net",
        "plugnet",
        '''
        from torch import nn

        def plug_net(num_classes: int = 10, in_channels: int = 3, input_size: int = 32, width: int = 4):
            """A plug-in network."""
            return nn.Sequential(nn.Conv2d(in_channels, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(width, num_classes))
        ''',
    )
    _plugin(
        site,
        "plugfamilies",
        "plugfamilies",
        "plugfamilies",
        """
        from torch import nn
        from mncli.models import register_family

        @register_family("plug-family", pattern=r"plug-(?P<width>\\d+)", description="widths by name",
                         examples=["plug-8"], default_dataset="cifar10")
        def plug(width: int = 8, *, num_classes: int = 10, in_channels: int = 3, input_size: int = 32):
            return nn.Sequential(nn.Conv2d(in_channels, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(width, num_classes))
        """,
    )
    _plugin(site, "broken", "brokenplug:nothing", "brokenplug", "raise RuntimeError('plugin bug')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    listed = _mncli("models", "--json", cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    names = {row["name"]: row for row in json.loads(listed.stdout)["models"]}
    assert (
        names["plug-net"]["description"] == "A plug-in network."
        and names["plug-8"]["family"] == "plug-family"
    )
    assert "model plugin broken (brokenplug:nothing) not loaded: plugin bug" in listed.stderr
    scored = _mncli("score", "--arch", "plug-16", "--json", cwd=tmp_path, env=env)
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["task"]["label"].startswith("cifar10 ")
