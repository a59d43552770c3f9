"""`mncli search` end to end on a tiny synthetic dataset: the artifact, its manifest, bad inputs."""

from __future__ import annotations

import pytest
import torch

from mncli.cli.app import main

DATA = "synthetic:classes=3,shape=1x12x12,train=96,test=24"
SPACE = [
    "--widths", "8,16", "--repeats", "2,1", "--strides", "2,2", "--stem-channels", "8",
    "--head-channels", "0", "--ops", "k3_e3,k5_e3,zero",
]  # fmt: skip
QUICK = ["--weights-warmup-epochs", "1", "--epochs", "1", "-b", "16", "--arch-every", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    out = tmp_path_factory.mktemp("search") / "arch.safetensors"
    return out, main(["search", "-d", DATA, *SPACE, *QUICK, "--target-ops", "2e5", "-o", str(out), "--json"])


def test_search_writes_an_architecture_only_artifact(searched, capsys):
    from mncli.artifact import load_artifact
    from mncli.bundle import load_bundle
    from mncli.models import input_shape
    from mncli.scoring import score_model

    out, code = searched
    assert code == 0
    tensors, manifest = load_artifact(out)
    assert tensors == {}
    assert manifest["stage"] == "search" and manifest["arch"]["name"] == "mbconv"
    search = manifest["search"]
    assert len(search["blocks"]) == 3
    for block in search["blocks"]:
        assert sum(block["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert block["chosen"] in block["probabilities"]
    assert search["history"][-1]["phase"] == "search"
    bundle = load_bundle(out, require_weights=False)
    counted = score_model(bundle.model, {}, input_shape=input_shape(bundle.arch))["ops"]
    assert search["derived_cost"] == pytest.approx(counted)
    assert search["derived_cost"] <= 2e5
    assert manifest["metrics"]["score"]["ops"] == pytest.approx(counted)


def test_the_derived_network_trains(searched):
    from mncli.bundle import load_bundle

    bundle = load_bundle(searched[0], require_weights=False)
    model = bundle.model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 1, 12, 12), torch.randint(0, 3, (8,))
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    assert model(x).shape == (8, 3)


def test_impossible_target_is_bad_input(tmp_path, run_cli):
    run = run_cli(
        "search", "-d", DATA, *SPACE, *QUICK, "--target-ops", "1000", "-o", tmp_path / "a.safetensors"
    )
    assert run.code == 2
    assert "below the cheapest network" in run.err
    assert not (tmp_path / "a.safetensors").exists()


def test_unknown_op_and_conflicting_targets_are_bad_input(tmp_path, run_cli):
    out = tmp_path / "a.safetensors"
    run = run_cli("search", "-d", DATA, "--ops", "k3_e3,dilated", "-o", out)
    assert run.code == 2
    assert "unknown candidate op 'dilated'" in run.err
    run = run_cli("search", "-d", DATA, "--target-ops", "1e6", "--target-params", "1e4", "-o", out)
    assert run.code == 2
    assert "give one cost target" in run.err
    assert run_cli("search", "-d", DATA, "--cost", "params", "--target-ops", "1e6", "-o", out).code == 2
    # the ops are checked before any data is read: this dataset is not there
    missing = ["-d", "cifar10", "--data-dir", tmp_path / "nothing"]
    run = run_cli("search", *missing, "--ops", "k3_e3,dilated", "-o", out)
    assert run.code == 2
    assert "unknown candidate op 'dilated'" in run.err


@pytest.mark.parametrize(
    "option", [["--cost-loss", "mul#lgo"], ["--cost", "flops"], ["--binary-mode", "three"], ["--act", "gelu"]]
)
def test_a_typo_in_a_choice_fails_while_parsing(tmp_path, run_cli, option):
    import time

    started = time.perf_counter()
    run = run_cli("search", "-d", "cifar10", *option, "-o", tmp_path / "a.safetensors")
    assert run.code == 2
    err = run.err
    assert "Invalid value" in err and option[0] in err and option[1] in err
    assert time.perf_counter() - started < 2  # no data, no super-network


def test_the_search_records_its_options_beside_the_training(searched):
    from mncli.artifact import read_manifest

    manifest = read_manifest(searched[0])
    params = manifest["params"]
    assert params["weights_warmup_epochs"] == 1 and params["cost_loss"] == "mul#log"
    assert params["train"]["epochs"] == 1 and params["train"]["lr"] == 0.05
    assert params["train"]["weight_decay"] == 4e-5 and params["train"]["label_smoothing"] == 0.1
    assert params["train"]["warmup_epochs"] == 0.0  # --warmup-epochs is the LR warm-up
    assert manifest["metrics"]["search_epochs"] == 1 and manifest["metrics"]["weights_warmup_epochs"] == 1
    assert [h["phase"] for h in manifest["search"]["history"]] == ["warm-up", "search"]


def test_resume_without_a_checkpoint_starts_from_the_beginning(tmp_path, run_cli):
    out = tmp_path / "r.safetensors"
    args = ["search", "-d", DATA, *SPACE, *QUICK, "--target-ops", "2e5", "--warmup-epochs", "0.5"]
    run = run_cli(*args, "--resume", "-o", out, "--json")
    assert run.code == 0
    assert "no checkpoint in" in run.err and "starting from the beginning" in run.err
    assert run.json["output"] == str(out)
    from mncli.artifact import read_manifest

    assert read_manifest(out)["params"]["train"]["warmup_epochs"] == 0.5
    assert not (tmp_path / "r.ckpt").exists()  # the checkpoints go once the output is written


def test_json_result_names_costs(searched, tmp_path, run_cli):
    out = tmp_path / "b.safetensors"
    target = ["--target-params", "2500", "--binary-mode", "two"]
    run = run_cli("search", "-d", DATA, *SPACE, *QUICK, *target, "-o", out, "--json")
    assert run.code == 0
    result = run.json
    assert result["cost"] == "params" and result["target"] == 2500
    assert result["output"] == str(out)
    assert result["derived_cost"] == pytest.approx(result["score"]["params"])


def test_a_weak_cost_term_is_pointed_out():
    from mncli.stages.search import weak_cost_note

    assert "add#linear" in weak_cost_note("mul#log", 14.2e6, 5e6)
    assert weak_cost_note("mul#log", 6e6, 5e6) is None  # the fit's small correction is normal
    assert weak_cost_note("add#linear", 14.2e6, 5e6) is None


def test_undecided_search_is_named():
    from mncli.stages.search import undecided_note

    uniform = {f"op{j}": 1 / 7 for j in range(7)}
    leaning = {"a": 0.4, "b": 0.3, "c": 0.3}  # 1.2x uniform
    decided = {"a": 0.9, "b": 0.05, "c": 0.05}  # 2.7x uniform
    note = undecided_note([uniform, leaning, uniform, decided])
    assert note and "1.1x" in note and "--arch-lr" in note  # median of 1.0, 1.0, 1.2, 2.7
    assert undecided_note([decided, decided, leaning]) is None
    assert undecided_note([{"only": 1.0}]) is None  # a block with one choice says nothing


def test_the_config_checks_its_choices_without_the_command_line():
    from mncli.errors import BadInput
    from mncli.stages.search import Activation, CostLoss, SearchConfig

    config = SearchConfig(act="HSWISH", cost_loss="add#linear", ops=["K3_E3", "zero"]).validate()
    assert config.act is Activation.HSWISH and config.cost_loss is CostLoss.ADD_LINEAR
    assert config.ops == ["k3_e3", "zero"]
    with pytest.raises(BadInput, match="unknown cost loss 'mul#lgo'"):
        SearchConfig(cost_loss="mul#lgo").validate()
    with pytest.raises(BadInput, match="--weights-warmup-epochs"):
        SearchConfig(weights_warmup_epochs=-1).validate()


def test_the_act_choices_are_the_zoos_activations():
    from mncli.models.blocks import ACTIVATIONS
    from mncli.stages.search import Activation

    assert {a.value for a in Activation} == set(ACTIVATIONS)
