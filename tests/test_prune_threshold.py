"""`mncli prune --threshold T`: every |w| < T of every conv/linear layer (or the --layers) an exact zero,
nothing else changed without --epochs, the zeros recorded as masks that fine-tuning and later stages
keep, accuracy and score before and after reported, and T <= 0 or a clash refused with exit 2."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_artifact

DATA = "synthetic:classes=4,shape=3x16x16,train=64,test=32"
ARGS = {"num_classes": 4, "input_size": 16}
FAST = ["--batch-size", "32", "--seed", "0", "--device", "cpu", "--json"]
LAYERS = ("conv1", "conv2", "conv3", "fc")  # every conv/linear layer of test-cnn, stem and classifier too
T = 0.02


def _weights(path) -> dict[str, torch.Tensor]:
    from mncli.bundle import load_bundle

    modules = dict(load_bundle(path).model.named_modules())
    return {name: modules[name].weight.detach().clone() for name in LAYERS}


def test_threshold_zeroes_exactly_the_small_weights_of_every_layer(tmp_path, run_cli):
    from mncli.bundle import load_bundle

    src = tiny_artifact(tmp_path / "in.safetensors", args=ARGS, metrics={"score": None})
    out = tmp_path / "t.safetensors"
    run = run_cli("prune", src, "--threshold", T, "-d", DATA, "-o", out, *FAST)
    assert run.code == 0, run.err
    before, after = _weights(src), _weights(out)
    for name in LAYERS:
        small = before[name].abs() < T
        assert 0 < int(small.sum()) < small.numel(), name  # the test means something
        assert torch.equal(after[name], torch.where(small, torch.zeros_like(before[name]), before[name])), (
            name
        )
        assert run.json["layers"][name]["achieved"] == pytest.approx(float(small.float().mean()))
    result = run.json
    assert result["method"] == "threshold" and result["max_deviation_weights"] == 0
    assert {"val_acc_before", "val_acc", "test_acc_before", "test_acc", "score_before", "score"} <= set(
        result
    )
    assert result["score"] is not None and result["score"] < result["score_before"]  # zeros are free
    bundle = load_bundle(out)
    spec = bundle.specs["conv2"]
    assert spec["mask"] and spec["prune_method"] == "threshold" and spec["threshold"] == T
    assert "target_sparsity" not in spec
    assert bundle.manifest["params"]["train"]["epochs"] == 0  # no fine-tuning unless asked
    assert bundle.manifest["params"]["threshold"] == T


def test_layers_limit_the_threshold(tmp_path, run_cli):
    src = tiny_artifact(tmp_path / "in.safetensors", args=ARGS, metrics={"score": None})
    out = tmp_path / "t.safetensors"
    run = run_cli("prune", src, "--threshold", T, "--layers", "conv2", "-d", DATA, "-o", out, *FAST)
    assert run.code == 0, run.err
    assert list(run.json["layers"]) == ["conv2"]
    before, after = _weights(src), _weights(out)
    assert all(torch.equal(before[n], after[n]) for n in ("conv1", "conv3", "fc"))


def test_the_zeros_stay_through_fine_tuning_and_a_later_train_stage(tmp_path, run_cli):
    src = tiny_artifact(tmp_path / "in.safetensors", args=ARGS, metrics={"score": None})
    tuned = tmp_path / "tuned.safetensors"
    run = run_cli("prune", src, "--threshold", T, "--epochs", "1", "-d", DATA, "-o", tuned, *FAST)
    assert run.code == 0, run.err
    zeros = {name: w.abs() < T for name, w in _weights(src).items()}
    for name, w in _weights(tuned).items():
        assert (w[zeros[name]] == 0).all() and (w[~zeros[name]] != 0).all(), name  # MaskCallback
    trained = tmp_path / "trained.safetensors"
    run = run_cli("train", tuned, "--epochs", "1", "--lr", "0.1", "-d", DATA, "-o", trained, *FAST)
    assert run.code == 0, run.err
    moved = False
    for name, w in _weights(trained).items():
        assert (w[zeros[name]] == 0).all(), name  # the recorded masks, kept by keep_pruned
        moved |= not torch.equal(w, _weights(tuned)[name])
    assert moved  # the later stage did train


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--threshold", "0"], "--threshold must be > 0"),
        (["--threshold", "-0.01"], "--threshold must be > 0"),
        (["--threshold", "nan"], "--threshold must be > 0"),
        (["--method", "threshold"], "--method threshold needs --threshold"),
        (["--threshold", "0.01", "--sparsity", "0.5"], "not with --sparsity"),
        (["--threshold", "0.01", "--method", "magnitude"], "not one of --method magnitude"),
        (["--threshold", "0.01", "--layers", "conv9"], "matches no layer"),
    ],
)
def test_bad_thresholds_exit_2(tmp_path, run_cli, extra, message):
    src = tiny_artifact(tmp_path / "in.safetensors", args=ARGS, metrics={"score": None})
    out = tmp_path / "o.safetensors"
    run = run_cli("prune", src, "-d", DATA, "-o", out, *extra)
    assert run.code == 2, run.err
    assert len(run.err.splitlines()) == 1 and message in run.err, run.err
    assert not out.exists()


def test_threshold_on_a_ternary_layer_keeps_it_ternary_without_fine_tuning(tmp_path, run_cli):
    """EC2T's `--prune-threshold` before scoring: zeroing keeps a ternary layer's values on its format
    (only fine-tuning would move them off it)."""
    from mncli.bundle import bundle_from_arch, load_bundle, save_bundle

    torch.manual_seed(0)
    bundle = bundle_from_arch("test-cnn", ARGS)
    conv2 = bundle.model.conv2.weight
    codes = torch.randint(-1, 2, conv2.shape)
    with torch.no_grad():
        conv2.copy_(torch.where(codes > 0, 0.01, torch.where(codes < 0, -0.2, 0.0)))
    bundle.specs["conv2"] = {"weight": {"format": "ternary", "bits": 2, "wp": 0.01, "wn": 0.2}}
    src = tmp_path / "ternary.safetensors"
    save_bundle(bundle, src, stage="ternarize")
    out = tmp_path / "t.safetensors"
    run = run_cli("prune", src, "--threshold", T, "-d", DATA, "-o", out, *FAST)
    assert run.code == 0, run.err
    pruned = load_bundle(out)
    assert torch.equal(pruned.model.conv2.weight, torch.where(codes < 0, -0.2, 0.0))
    assert pruned.specs["conv2"]["weight"]["format"] == "ternary" and pruned.specs["conv2"]["mask"]
    refused = run_cli("prune", src, "--threshold", T, "--epochs", "1", "-d", DATA, "-o", out, *FAST)
    assert refused.code == 2 and "already ternary" in refused.err


def test_relative_threshold_is_a_fraction_of_each_layers_largest_weight(tmp_path, run_cli):
    from mncli.bundle import load_bundle

    src = tiny_artifact(tmp_path / "in.safetensors", args=ARGS, metrics={"score": None})
    out = tmp_path / "rel.safetensors"
    run = run_cli("prune", src, "--threshold", 0.2, "--relative-threshold", "-d", DATA, "-o", out, *FAST)
    assert run.code == 0, run.err
    before, after = _weights(src), _weights(out)
    for name in LAYERS:
        small = before[name].abs() < 0.2 * before[name].abs().max()
        assert 0 < int(small.sum()) < small.numel(), name
        expected = torch.where(small, torch.zeros_like(before[name]), before[name])
        assert torch.equal(after[name], expected), name
    assert load_bundle(out).specs["conv1"]["threshold_of"] == "max|w|"
    alone = run_cli("prune", src, "--relative-threshold", "-d", DATA, "-o", tmp_path / "x.safetensors")
    assert alone.code == 2 and "--relative-threshold needs --threshold" in alone.err
