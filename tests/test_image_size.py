"""The resolution every stage reads ImageNet at: the input's (or, for `train --arch`, the
architecture's own), or --image-size; what each stage logs about it and records in its manifest; and
the refusals (out of range, a fixed-size dataset at another size). A tiny generated ImageFolder of
JPEGs, tiny models, one step per epoch."""

from __future__ import annotations

import pytest

from conftest import tiny_artifact, write_image_folder
from mncli.artifact import read_manifest
from mncli.data.datasets import load_data
from mncli.errors import BadInput
from mncli.stages.training import TrainOptions, image_size_choice

FAST = ("--epochs", "1", "--max-steps-per-epoch", "1", "-b", "4", "--val-size", "4", "--device", "cpu")
TINY_EFFICIENTNET = ("--arch-opt", "width_mult=0.1", "--arch-opt", "depth_mult=0.1")
SYN = "synthetic:classes=2,shape=3x16x16,train=64,test=16"


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """--data-dir of an ImageFolder tree: 2 classes, 8 training and 2 test JPEGs each, 30x40 px."""
    return write_image_folder(tmp_path_factory.mktemp("data"), ("a", "b"), {"train": 8, "val": 2})


@pytest.fixture(autouse=True)
def _in_process_loading(monkeypatch):
    monkeypatch.setenv("MNCLI_WORKERS", "0")  # tiny images: worker processes would cost more


@pytest.fixture(scope="module")
def input72(tmp_path_factory):
    """An artifact whose architecture takes 72 px ImageNet images (global pooling: any size runs)."""
    folder = tmp_path_factory.mktemp("inputs")
    return tiny_artifact(
        folder / "cnn72.safetensors", "test-cnn", {"num_classes": 2, "input_size": 72, "width": 4}
    )


def _line(err: str) -> str:
    """The stage's one line about what it loads."""
    lines = [line for line in err.splitlines() if line.startswith("imagenet at ")]
    assert len(lines) == 1, err
    return lines[0]


def _data(path) -> dict:
    return read_manifest(path)["data"]


# ---------------------------------------------------------------- train --arch


def test_train_efficientnet_b1_reads_its_native_240(run_cli, imagenet, tmp_path):
    out = tmp_path / "b1.safetensors"
    run = run_cli(
        "train", "--arch", "efficientnet-b1", "-d", "imagenet", "--data-dir", imagenet, *TINY_EFFICIENTNET,
        *FAST, "-o", out,
    )  # fmt: skip
    assert run.code == 0, run.err
    assert _line(run.err) == (
        "imagenet at 240 px (efficientnet-b1's imagenet resolution): "
        "train random-resized-crop 240 + flip, eval resize 274 + centre crop 240"
    )
    manifest = read_manifest(out)
    assert manifest["arch"]["args"]["input_size"] == 240
    assert manifest["data"]["image_shape"] == [3, 240, 240] and manifest["data"]["eval_resize"] == 274


def test_train_efficientnet_b0_at_another_image_size_keeps_its_architecture(run_cli, imagenet, tmp_path):
    out = tmp_path / "b0.safetensors"
    run = run_cli(
        "train", "--arch", "efficientnet-b0", "-d", "imagenet", "--data-dir", imagenet, *TINY_EFFICIENTNET,
        "--image-size", "64", *FAST, "-o", out,
    )  # fmt: skip
    assert run.code == 0, run.err
    assert _line(run.err).startswith(
        "imagenet at 64 px (--image-size; efficientnet-b0's imagenet resolution is 224 px): "
        "train random-resized-crop 64"
    )
    manifest = read_manifest(out)
    assert manifest["arch"]["args"]["input_size"] == 224  # the architecture is not changed
    assert manifest["data"]["image_shape"] == [3, 64, 64] and manifest["params"]["train"]["image_size"] == 64


def test_train_arch_opt_input_size_is_the_size_read(run_cli, imagenet, tmp_path):
    out = tmp_path / "cnn.safetensors"
    run = run_cli(
        "train", "--arch", "test-cnn", "-d", "imagenet", "--data-dir", imagenet,
        "--arch-opt", "input_size=40", *FAST, "-o", out,
    )  # fmt: skip
    assert run.code == 0, run.err
    assert _line(run.err).startswith("imagenet at 40 px (--arch-opt input_size): ")
    assert _data(out)["image_shape"] == [3, 40, 40]


# ---------------------------------------------------------------- compression stages


@pytest.mark.parametrize(
    "stage, options",
    [
        ("prune", ("--sparsity", "0.5")),
        ("ternarize", ()),
        ("quantize", ("--weight-bits", "8", "--act-bits", "8")),
    ],
)
def test_compression_stages_read_the_inputs_resolution(run_cli, imagenet, input72, tmp_path, stage, options):
    out = tmp_path / f"{stage}.safetensors"
    run = run_cli(stage, input72, "-d", "imagenet", "--data-dir", imagenet, *options, *FAST, "-o", out)
    assert run.code == 0, run.err
    assert _line(run.err) == (
        "imagenet at 72 px (the input's resolution): "
        "train random-resized-crop 72 + flip, eval resize 82 + centre crop 72"
    )
    assert _data(out)["image_shape"] == [3, 72, 72]


def test_prune_at_another_image_size_says_both_and_verify_reproduces_it(run_cli, imagenet, input72, tmp_path):
    out = tmp_path / "pruned48.safetensors"
    run = run_cli(
        "prune", input72, "-d", "imagenet", "--data-dir", imagenet, "--sparsity", "0.5", "--image-size", "48",
        *FAST, "-o", out,
    )  # fmt: skip
    assert run.code == 0, run.err
    assert _line(run.err).startswith("imagenet at 48 px (--image-size; the input's resolution is 72 px): ")
    assert _data(out)["image_shape"] == [3, 48, 48]
    assert read_manifest(out)["arch"]["args"]["input_size"] == 72

    # verify measures at the recorded 48 px, so the claims hold
    run = run_cli("verify", out, "--reproduce", "--data-dir", imagenet, "--device", "cpu", "--json")
    assert run.code == 0, run.err
    claims = run.json["claims"]
    assert claims["image_size"] == 48 and claims["ok"]
    assert not [line for line in run.err.splitlines() if line.startswith("imagenet at ")]  # said in claims
    # at another size the numbers are shown, not compared
    run = run_cli(
        "verify",
        out,
        "--reproduce",
        "--data-dir",
        imagenet,
        "--device",
        "cpu",
        "--image-size",
        "56",
        "--json",
    )
    assert run.code == 0, run.err
    rows = [r for r in run.json["claims"]["rows"] if r["claim"] == "metrics.test_acc"]
    assert rows[0]["holds"] is None and "measured at 56 px, recorded at 48 px" in rows[0]["note"]


# ---------------------------------------------------------------- eval


def test_eval_reads_the_artifacts_resolution_or_the_image_size(run_cli, imagenet, input72):
    run = run_cli("eval", input72, "-d", "imagenet", "--data-dir", imagenet, "--device", "cpu", "--json")
    assert run.code == 0, run.err
    assert run.json["image_size"] == 72
    assert _line(run.err).startswith("imagenet at 72 px (the artifact's resolution): ")
    run = run_cli(
        "eval",
        input72,
        "-d",
        "imagenet",
        "--data-dir",
        imagenet,
        "--device",
        "cpu",
        "--image-size",
        "96",
        "--json",
    )
    assert run.code == 0, run.err
    assert run.json["image_size"] == 96
    assert _line(run.err) == (
        "imagenet at 96 px (--image-size; the artifact's resolution is 72 px): "
        "train random-resized-crop 96 + flip, eval resize 110 + centre crop 96"
    )


# ---------------------------------------------------------------- scale: a grid point's own resolution


def test_scale_reads_each_grid_points_resolution_once(imagenet, tmp_path):
    from mncli.stages.scale import ScaleConfig, _Stage

    opts = TrainOptions(dataset="imagenet", data_dir=imagenet, val_size=4, batch_size=4)
    stage = _Stage(None, tmp_path / "s.safetensors", ScaleConfig(phi=1.0), opts, source=None)
    loaded: dict = {}
    arch = {"name": "test-cnn", "args": {"num_classes": 2, "in_channels": 3, "input_size": 40}}
    first = stage._point_data(arch, 0, loaded)
    larger = stage._point_data({**arch, "args": {**arch["args"], "input_size": 46}}, 1, loaded)
    again = stage._point_data(arch, 2, loaded)
    assert (first.image_size, larger.image_size) == (40, 46) and again is first
    assert larger.info["image_size_from"] == "point 1's resolution"


# ---------------------------------------------------------------- choosing, and refusing


def test_image_size_choice():
    assert image_size_choice("imagenet", None, 240, "the input's resolution") == (
        240,
        "the input's resolution",
    )
    assert image_size_choice("imagenet", None, None, "the input's resolution") == (224, "the default")
    assert image_size_choice("imagenet", 256, 240, "the input's resolution") == (
        256,
        "--image-size; the input's resolution is 240 px",
    )
    assert image_size_choice("ImageNet", 256, None, "x") == (256, "--image-size")
    assert image_size_choice("cifar100", None, 32, "the input's resolution") == (None, "the dataset's size")


@pytest.mark.parametrize("size", ["8", "15", "1025"])
def test_image_size_out_of_range_is_refused(run_cli, imagenet, size, tmp_path):
    out = tmp_path / "o.safetensors"
    run = run_cli(
        "train", "--arch", "test-cnn", "-d", "imagenet", "--data-dir", imagenet, "--image-size", size,
        *FAST, "-o", out,
    )  # fmt: skip
    assert run.code == 2 and run.err.count("\n") == 1, run.err
    assert f"--image-size must be 16 to 1024 px, got {size}" in run.err and not out.exists()


def test_eval_image_size_out_of_range_is_refused(run_cli, input72, imagenet):
    run = run_cli("eval", input72, "-d", "imagenet", "--data-dir", imagenet, "--image-size", "8")
    assert run.code == 2 and "--image-size must be 16 to 1024 px, got 8" in run.err
    assert run.err.count("\n") == 1, run.err


def test_a_fixed_size_dataset_refuses_another_image_size(run_cli, tmp_path):
    out = tmp_path / "o.safetensors"
    run = run_cli("train", "--arch", "test-cnn", "-d", SYN, "--image-size", "32", *FAST, "-o", out)
    assert run.code == 2 and run.err.count("\n") == 1, run.err
    assert f"{SYN} images are 16 px; --image-size 32 applies to imagenet only" in run.err
    assert not out.exists()
    # its own size is accepted
    run = run_cli("train", "--arch", "test-cnn", "-d", SYN, "--image-size", "16", *FAST, "-o", out)
    assert run.code == 0, run.err
    assert (
        "synthetic:classes=2,shape=3x16x16,train=64,test=16 at 16 px (--image-size, the dataset's size)"
        in run.err
    )


def test_cifar_refuses_another_image_size_before_looking_for_files(tmp_path):
    with pytest.raises(BadInput, match="cifar10 images are 32 px; --image-size 64 applies to imagenet only"):
        load_data("cifar10", data_dir=tmp_path / "nowhere", image_size=64)


def test_verify_image_size_needs_reproduce(run_cli, input72):
    run = run_cli("verify", input72, "--image-size", "64")
    assert run.code == 2 and "only apply with --reproduce" in run.err
