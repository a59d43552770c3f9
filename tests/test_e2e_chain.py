"""The whole pipeline through the CLI on tiny synthetic data: every stage reads the previous
artifact, keeps what the earlier stages did, and the final artifact verifies, scores and reloads."""

import pytest
import torch

DATA = "synthetic:classes=4,shape=1x12x12,train=256,test=64"
FAST = ["--dataset", DATA, "--batch-size", "32", "--val-size", "64"]


@pytest.fixture
def run_json(run_cli):
    """`mncli ... --json`, which must succeed: its JSON result."""

    def run(*argv):
        result = run_cli(*argv, "--json")
        assert result.code == 0, result.err
        return result.json

    return run


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    return tmp_path_factory.mktemp("chain")


def test_train_prune_ternarize_quantize_score(chain, run_json):
    fp, pruned, tern, quant = (chain / f"{n}.safetensors" for n in ("fp", "pruned", "tern", "quant"))
    run_json("train", "--arch", "test-mbconv", *FAST, "--epochs", "2", "-o", str(fp))
    run_json(
        "prune",
        str(fp),
        *FAST,
        "--method",
        "agp",
        "--sparsity",
        "0.5",
        "--epochs",
        "2",
        "--start",
        "0",
        "--end",
        "2",
        "--freq",
        "1",
        "-o",
        str(pruned),
    )
    run_json("ternarize", str(pruned), *FAST, "--method", "ttq", "--epochs", "1", "-o", str(tern))
    run_json(
        "quantize",
        str(tern),
        *FAST,
        "--weight-bits",
        "8",
        "--act-bits",
        "8",
        "--epochs",
        "1",
        "-o",
        str(quant),
    )

    from mncli.bundle import load_bundle

    pruned_b, tern_b, quant_b = (load_bundle(p) for p in (pruned, tern, quant))
    # test-mbconv has depthwise convs: pruned, but left full precision by ternarize
    for name, spec in pruned_b.specs.items():
        if spec.get("mask"):
            zeros = pruned_b.model.get_submodule(name).weight == 0
            # a pruned weight stays zero through ternarize and quantize
            assert bool((tern_b.model.get_submodule(name).weight[zeros] == 0).all()), name
            assert bool((quant_b.model.get_submodule(name).weight[zeros] == 0).all()), name
    ternary = [n for n, s in tern_b.specs.items() if s.get("weight", {}).get("format") == "ternary"]
    assert ternary, "ttq ternarized no layer"
    for name in ternary:
        assert quant_b.specs[name]["weight"]["format"] == "ternary"  # quantize keeps it ternary
        assert torch.unique(quant_b.model.get_submodule(name).weight).numel() <= 3
    assert any(int(s.get("act", {}).get("bits", 32)) == 8 for s in quant_b.specs.values())

    scores = [run_json("score", str(p))["score"] for p in (fp, pruned, tern, quant)]
    assert scores[0] > scores[1] > scores[2] > scores[3], scores

    verify = run_json("verify", str(quant))
    assert verify["ok"], verify
    report = run_json("report", str(quant), "--chain")
    assert [r["stage"] for r in report["rows"]] == ["train", "prune", "ternarize", "quantize"]
    evaluated = run_json("eval", str(quant), "--dataset", DATA)
    assert 0.0 <= evaluated["top1"] <= 1.0
