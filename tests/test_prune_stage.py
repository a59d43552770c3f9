"""`mncli prune` end to end on tiny models and synthetic data: exact sparsity, masks that hold, small
files, channel-pruned artifacts that reload, and bad input refused with exit 2."""

import os

import pytest
import torch

from conftest import tiny_artifact

DATA = "synthetic:classes=4,shape=3x16x16,train=192,test=64"
FAST = ["--batch-size", "32", "--seed", "0", "--device", "cpu", "--json"]
ARGS = {"num_classes": 4, "input_size": 16}  # the zoo models sized for DATA
NO_SCORE = {"score": None}  # inputs saved without scoring them


@pytest.fixture
def prune(run_cli):
    """`mncli prune ... FAST`: the CliResult."""
    return lambda *args: run_cli("prune", *args, *FAST)


def _zeros_match_targets(path):
    from mncli.bundle import load_bundle
    from mncli.compress.prune.masks import target_count

    bundle = load_bundle(path)
    modules = dict(bundle.model.named_modules())
    for name, spec in bundle.specs.items():
        if not spec.get("mask"):
            continue
        w = modules[name].weight
        assert abs(int((w == 0).sum()) - target_count(spec["target_sparsity"], w.numel())) <= 1, name
    return bundle


def test_agp_reaches_targets_and_masked_weights_stay_zero(tmp_path, prune):
    src = tiny_artifact(tmp_path / "in.safetensors", args=ARGS, metrics=NO_SCORE)
    out = tmp_path / "agp.safetensors"
    run = prune(
        src, "-d", DATA, "-o", out, "--method", "agp", "--sparsity", "0.8",
        "--epochs", "4", "--end", "3", "--freq", "1",
    )  # fmt: skip
    assert run.code == 0, run.err
    result = run.json
    assert result["max_deviation_weights"] <= 1
    for name, row in result["layers"].items():
        assert row["achieved"] == pytest.approx(0.8, abs=1.5 / 100), name
    assert "conv1" not in result["layers"] and "fc" not in result["layers"]  # stem / classifier
    bundle = _zeros_match_targets(out)
    assert bundle.specs["conv2"]["mask"] and bundle.specs["conv2"]["method"] == "agp"
    manifest = bundle.manifest
    assert manifest["compression"]["prune"]["schedule"]["steps"][-1][1] == pytest.approx(0.8)
    assert len(manifest["compression"]["prune"]["history"]) == 4
    assert {"test_acc_before", "test_acc", "score_before", "score"} <= set(manifest["metrics"])


def test_magnitude_global_and_file_shrinks(tmp_path, prune):
    src = tiny_artifact(tmp_path / "in.safetensors", args={**ARGS, "width": 32}, metrics=NO_SCORE)
    out = tmp_path / "mag.safetensors"
    run = prune(
        src, "-d", DATA, "-o", out, "--method", "magnitude", "--sparsity", "0.8", "--global",
        "--layers", "*", "--epochs", "1",
    )  # fmt: skip
    assert run.code == 0, run.err
    assert run.json["achieved"] == pytest.approx(0.8, abs=1e-3)
    assert out.stat().st_size <= 0.30 * src.stat().st_size


def test_reweighted_l1_with_recipe_and_earlier_mask_kept(tmp_path, prune):
    src = tiny_artifact(tmp_path / "in.safetensors", args=ARGS, metrics=NO_SCORE)
    first = tmp_path / "first.safetensors"
    run = prune(src, "-d", DATA, "-o", first, "-m", "magnitude", "-s", "0.5", "--epochs", "0")
    assert run.code == 0, run.err
    from mncli.bundle import load_bundle

    zeros_before = load_bundle(first).model.conv3.weight == 0
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text('layers:\n  "conv2": {sparsity: 0.7}\n  "conv3": {sparsity: 0.3}\n')
    out = tmp_path / "rl1.safetensors"
    run = prune(
        first, "-d", DATA, "-o", out, "-m", "reweighted-l1", "--recipe", recipe,
        "--epochs", "2", "--retrain-epochs", "1", "--reweight-at", "1",
    )  # fmt: skip
    assert run.code == 0, run.err
    result = run.json
    assert result["layers"]["conv2"]["achieved"] == pytest.approx(0.7, abs=1 / 1152)
    bundle = load_bundle(out)
    conv3 = bundle.model.conv3.weight
    assert (conv3[zeros_before] == 0).all()  # target 0.3 below the existing 0.5: zeros kept
    assert int((conv3 == 0).sum()) == int(zeros_before.sum())
    assert bundle.manifest["compression"]["prune"]["milestones"] == [1]


def test_structured_resnet_reloads_with_identical_logits(tmp_path, prune):
    from mncli.bundle import load_bundle

    src = tiny_artifact(tmp_path / "in.safetensors", "test-resnet", ARGS, metrics=NO_SCORE)
    out = tmp_path / "slim.safetensors"
    run = prune(src, "-d", DATA, "-o", out, "--structured", "--channel-ratio", "0.5", "--epochs", "1")
    assert run.code == 0, run.err
    result = run.json
    assert result["params_after"] < result["params_before"]
    bundle = load_bundle(out)
    assert bundle.arch["shapes"]["layer2.0.conv1"][0] == 8
    assert sum(p.numel() for p in bundle.model.parameters()) == result["params_after"]
    again = load_bundle(out)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(bundle.model(x), again.model(x))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--sparsity", "1.0"], "outside [0, 1)"),
        (["--sparsity", "-0.1"], "outside [0, 1)"),
        (["--sparsity", "0.5", "--layers", "nope*"], "matches no layer"),
        (["--recipe", "RECIPE_EMPTY"], "names no layer"),
        (["--recipe", "RECIPE_TYPO"], "matches no layer"),
        (["--sparsity", "0.5", "--method", "lottery"], "Invalid value for '--method'"),
        (["--sparsity", "0.5", "--unit", "hours"], "Invalid value for '--unit'"),
        (["--structured", "--channel-ratio", "0.5", "--criterion", "l2"], "Invalid value for '--criterion'"),
        (["--sparsity", "0.5", "-m", "reweighted-l1", "--reweight-at", "1,x"], "--reweight-at takes"),
        (["--sparsity", "0.5", "--retrain-epochs", "-1"], "--retrain-epochs must be >= 0"),
        (["--sparsity", "0.5", "--unit", "steps"], "needs --end"),
        (["--sparsity", "0.5", "--end", "9", "--epochs", "4"], "not inside the run"),
        (["--structured", "--sparsity", "0.5"], "--structured removes channels"),
        (["--structured", "--channel-ratio", "1.5"], "outside [0, 1)"),
    ],
)
def test_bad_input_exits_2(tmp_path, run_cli, extra, message):
    src = tiny_artifact(tmp_path / "in.safetensors", args=ARGS, metrics=NO_SCORE)
    (tmp_path / "empty.yaml").write_text("layers: {}\n")
    (tmp_path / "typo.yaml").write_text('layers:\n  "conv9": {sparsity: 0.5}\n')
    extra = [
        str(tmp_path / "empty.yaml")
        if e == "RECIPE_EMPTY"
        else str(tmp_path / "typo.yaml")
        if e == "RECIPE_TYPO"
        else e
        for e in extra
    ]
    run = run_cli("prune", src, "-d", DATA, "-o", tmp_path / "o.safetensors", *extra, "--epochs", "0")
    assert run.code == 2
    assert message in run.err
    assert not (tmp_path / "o.safetensors").exists()


def test_architecture_only_input_is_refused(tmp_path, run_cli):
    src = tiny_artifact(tmp_path / "arch.safetensors", args=ARGS, weights=False, metrics=NO_SCORE)
    run = run_cli("prune", src, "-d", DATA, "-o", tmp_path / "o.safetensors", "-s", "0.5")
    assert run.code == 2
    assert "architecture-only" in run.err


def test_structured_recipe_prunes_only_the_named_layers(tmp_path, prune):
    from mncli.bundle import load_bundle

    src = tiny_artifact(tmp_path / "in.safetensors", "test-resnet", ARGS, metrics=NO_SCORE)
    recipe = tmp_path / "channels.json"
    recipe.write_text('{"layers": {"layer2.0.conv1": {"channel_ratio": 0.75}}}')
    out = tmp_path / "slim.safetensors"
    run = prune(src, "-d", DATA, "-o", out, "--structured", "--recipe", recipe, "--epochs", "0")
    assert run.code == 0 and run.json["channels_removed"] == 12, run.err
    assert load_bundle(out).arch["shapes"] == {
        "layer2.0.conv1": [4, 8, 3, 3], "layer2.0.bn1": [4], "layer2.0.conv2": [16, 4, 3, 3]
    }  # fmt: skip


def test_resume_without_a_checkpoint_starts_from_the_beginning(tmp_path, prune):
    src = tiny_artifact(tmp_path / "in.safetensors", args=ARGS, metrics=NO_SCORE)
    out = tmp_path / "p.safetensors"
    run = prune(src, "-d", DATA, "-o", out, "-m", "magnitude", "-s", "0.5", "--epochs", "1", "--resume")
    assert run.code == 0 and run.json["output"] == str(out) and out.is_file(), run.err
    assert not (tmp_path / "p.safetensors.ckpt").exists()


def test_method_defaults_fill_only_what_is_not_given():
    from mncli.stages.prune import PruneConfig, PruneMethod, Pruning
    from mncli.stages.training import TrainOptions

    unset = TrainOptions(epochs=None, lr=None, optimizer=None, weight_decay=None)
    agp = Pruning(PruneConfig(sparsity=0.5)).options(unset)
    assert (agp.epochs, agp.optimizer, agp.lr, agp.weight_decay) == (40, "sgd", 0.01, 1e-4)
    rl1 = Pruning(PruneConfig(method=PruneMethod.REWEIGHTED_L1, sparsity=0.5)).options(unset)
    assert (rl1.epochs, rl1.optimizer, rl1.lr, rl1.weight_decay) == (300, "adam", 1e-3, 0.0)  # the seed's
    assert (rl1.schedule, rl1.batch_size) == ("cosine", 128)  # given in `unset`: kept
    slim = Pruning(PruneConfig(structured=True, channel_ratio=0.5)).options(unset)
    assert (slim.epochs, slim.optimizer, slim.lr) == (20, "sgd", 0.01)
    given = Pruning(PruneConfig(method="magnitude", sparsity=0.5)).options(
        TrainOptions(epochs=3, lr=0.5, optimizer="adamw", weight_decay=0.0)
    )
    assert (given.epochs, given.optimizer, given.lr, given.weight_decay) == (3, "adamw", 0.5, 0.0)


def test_config_typos_from_python_are_bad_input():
    from mncli.errors import BadInput
    from mncli.stages.prune import PruneConfig

    with pytest.raises(BadInput, match="unknown method 'lottery'"):
        PruneConfig(method="lottery", sparsity=0.5).validate()
    with pytest.raises(BadInput, match="unknown unit"):
        PruneConfig(sparsity=0.5, unit="hours").validate()
    assert PruneConfig(method="magnitude", sparsity=0.5).validate().method == "magnitude"


def test_method_prunes_in_memory_without_files():
    from mncli.bundle import bundle_from_arch
    from mncli.stages.compression import Run
    from mncli.stages.prune import PruneConfig, Pruning
    from mncli.stages.training import TrainOptions

    bundle = bundle_from_arch("test-cnn", {"num_classes": 4, "input_size": 16})
    method = Pruning(PruneConfig(method="magnitude", sparsity=0.6))
    opts = method.options(TrainOptions(dataset=DATA, epochs=1, batch_size=32, device="cpu")).validate()
    specs: dict = {}
    method.check(bundle.model, specs, bundle.arch, opts)
    run = Run(model=bundle.model, specs=specs, arch=bundle.arch, data=opts.load_data(), options=opts)
    result = method.apply(run)
    assert result["method"] == "magnitude" and result["max_deviation_weights"] <= 1
    assert result["metrics"]["sparsity"]["achieved"] == pytest.approx(0.6, abs=1e-3)
    assert specs["conv2"]["mask"] and specs["conv2"]["target_sparsity"] == 0.6
    assert run.record["method"] == "magnitude" and "layers" not in run.record
    assert method.params()["method"] == "magnitude"


@pytest.mark.parametrize("command", ["prune", "train", "ternarize", "quantize"])
def test_an_output_that_is_the_input_under_another_name_is_refused_before_any_work(
    tmp_path, run_cli, command
):
    path = tiny_artifact(tmp_path / "in.safetensors", args=ARGS, metrics=NO_SCORE)
    link = tmp_path / "link.safetensors"
    os.link(path, link)
    before = path.read_bytes()
    extra = ["--sparsity", "0.5"] if command == "prune" else []
    run = run_cli(command, path, "-d", DATA, "-o", link, "--epochs", "1", *extra)
    assert run.code == 2
    assert "would overwrite the input file" in run.err
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "in.manifest.json",
        "in.safetensors",
        "link.safetensors",
    ]
