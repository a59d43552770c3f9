"""`mncli score` end to end: architectures, artifacts written by save_bundle, options and errors."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_artifact
from mncli.bundle import bundle_from_arch, save_bundle

LAYER_KEYS = {"name", "type", "params", "mults", "adds", "sparsity", "weight_bits", "act_bits"}


@pytest.fixture
def score_json(run_cli):
    """`mncli score ... --json`, which must succeed: its report."""

    def score(*argv) -> dict:
        result = run_cli("score", *argv, "--json")
        assert result.code == 0, result.err
        return result.json

    return score


def ternary_artifact(path, *, specs: bool = True, accuracy: float = 0.83) -> None:
    torch.manual_seed(0)
    bundle = bundle_from_arch("test-cnn", {})
    weight = bundle.model.conv2.weight
    with torch.no_grad():
        values = torch.zeros_like(weight)
        values[weight > 0.05] = 0.1
        values[weight < -0.05] = -0.08
        weight.copy_(values)
    if specs:
        bundle.specs = {
            "conv2": {"weight": {"format": "ternary", "bits": 2, "wp": 0.1, "wn": 0.08}, "mask": True}
        }
    save_bundle(
        bundle, path, stage="ternarize", metrics={"test": {"top1": accuracy}}, data={"dataset": "cifar100"}
    )


def test_arch_json_is_one_object_with_the_contract_keys(score_json):
    report = score_json("--arch", "resnet20", "--dataset", "cifar10")
    for key in ("params", "mults", "adds", "ops", "score", "baseline", "conventions", "accuracy", "layers"):
        assert key in report
    assert report["baseline"] == {"name": "WideResNet-28-10", "params": 36.5e6, "ops": 10.49e9}
    assert "cifar100 constants" in report["task"]["label"]
    assert report["model"]["args"]["num_classes"] == 10 and report["input_shape"] == [3, 32, 32]
    assert all(LAYER_KEYS <= set(layer) for layer in report["layers"])
    assert report["accuracy"] is None


def test_arch_opt_and_dataset_set_the_shape(score_json):
    report = score_json("--arch", "resnet20", "--arch-opt", "input_size=16", "-d", "mnist")
    assert report["input_shape"] == [1, 16, 16]


def test_table_output_has_rows_totals_and_score(run_cli):
    result = run_cli("score", "--arch", "test-resnet", "--dataset", "cifar100")
    assert result.code == 0
    out = result.out
    assert "total" in out and "score 0.0" in out and "add" in out


def test_artifact_ternary_layer_accuracy_and_storage_options(tmp_path, score_json):
    path = tmp_path / "tern.safetensors"
    ternary_artifact(path)
    report = score_json(str(path))
    conv2 = next(layer for layer in report["layers"] if layer["name"] == "conv2")
    assert conv2["weight_format"] == "ternary" and conv2["sparsity"] > 0
    assert report["accuracy"] == {
        "test_top1": 83.0,
        "target": 80.0,
        "target_task": "cifar100",
        "meets_target": True,
    }
    assert report["source"] == str(path) and report["verified"]
    sign1 = score_json(str(path), "--ternary-storage", "sign1")
    assert sign1["params"] < report["params"] and sign1["conventions"]["ternary_storage"] == "sign1"
    imagenet = score_json(str(path), "--dataset", "imagenet")
    assert imagenet["baseline"]["ops"] == 1170e6 and imagenet["accuracy"]["target"] == 75.0


def test_artifact_without_claims_is_inferred_only_on_request(tmp_path, score_json):
    path = tmp_path / "plain.safetensors"
    ternary_artifact(path, specs=False)
    plain = score_json(str(path))
    inferred = score_json(str(path), "--infer")
    formats = {layer["name"]: layer["weight_format"] for layer in inferred["layers"]}
    assert formats["conv2"] == "ternary" and formats["conv1"] == "fp32"
    assert inferred["params"] < plain["params"]


def test_architecture_only_artifact_counts_dense_unverified(tmp_path, score_json):
    path = tmp_path / "arch.safetensors"
    tiny_artifact(path, "test-cnn", weights=False, stage="search")
    report = score_json(str(path))
    assert not report["verified"] and report["params"] > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--arch", "no-such-net"], "unknown architecture"),
        (["--arch", "resnet20", "--dataset", "coco"], "unknown dataset"),
        (["missing.safetensors"], "not found"),
        (["x.safetensors", "--arch", "resnet20"], "exactly one"),
        (["--arch", "resnet20", "--ternary-storage", "codes3"], "--ternary-storage"),
        (["--arch", "resnet20", "--ternary-mults", "sparse"], "--ternary-mults"),
    ],
)
def test_bad_input_exits_2_with_one_line(run_cli, argv, message):
    result = run_cli("score", *argv)
    assert result.code == 2
    assert message in result.err


def test_freebie_refused_on_a_ternary_artifact(tmp_path, run_cli):
    path = tmp_path / "tern.safetensors"
    ternary_artifact(path)
    result = run_cli("score", path, "--freebie16")
    assert result.code == 2
    assert "--freebie16 refused: layer conv2" in result.err


def test_help_has_examples(run_cli):
    result = run_cli("score", "--help")
    assert result.code == 0
    out = result.out
    assert "mncli score --arch" in out and "--freebie16" in out


def test_a_typo_in_a_choice_is_rejected_while_parsing(run_cli):
    """Choices are checked by the command line parser (exit 2), before any model is built."""
    result = run_cli("score", "--arch", "no-such-net", "--ternary-storage", "codes3")
    assert result.code == 2
    err = result.err
    assert "codes3" in err and "codes2" in err and "unknown architecture" not in err


def test_python_config_accepts_plain_strings_and_rejects_unknown_ones():
    from mncli.errors import BadInput
    from mncli.stages.score import ScoreConfig, TernaryStorage, run

    cfg = ScoreConfig(arch="test-cnn", dataset="cifar100", ternary_storage="sign1").validate()
    assert cfg.ternary_storage is TernaryStorage.SIGN1
    assert run(cfg)["conventions"]["ternary_storage"] == "sign1"
    with pytest.raises(BadInput, match="ternary storage"):
        run(ScoreConfig(arch="test-cnn", ternary_storage="codes3"))
