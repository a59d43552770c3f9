"""What the RL1 and MIT reproductions need: the reweighted-L1 seed's MobileNetV2, its exponential LR
schedule and method defaults, per-layer settings by the seed's layer indices (`QBNs[i]`), and a search
space that holds the MIT seed's 5.77M-parameter network (counted on the meta device)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import tiny_artifact
from mncli.errors import BadInput

SYN = "synthetic:classes=4,shape=3x16x16,train=128,test=32"
FAST = ["--batch-size", "32", "--val-size", "32", "--device", "cpu", "--seed", "0"]
ARGS = {"num_classes": 4, "input_size": 16}  # test-cnn sized for SYN
# The seed README's 6-bit layers: QBNs[3], [5], [8], [10], [11], [14], [16], [19] and [Layers-3].
SEED_QBNS = ["QBNs[3]", "QBNs[5]", "QBNs[8]", "QBNs[10]", "QBNs[11]", "QBNs[14]", "QBNs[16]", "QBNs[19]",
             "QBNs[Layers-3]"]  # fmt: skip


def _manifest(path):
    return json.loads(path.with_name(path.name.removesuffix(".safetensors") + ".manifest.json").read_text())


def _one_line_error(run, *words):
    assert run.code == 2 and run.out == "", (run.code, run.err)
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.err, run.err
    for word in words:
        assert word in lines[0], lines[0]


# --- the RL1 network


def _conv_weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))


def test_rl1_network_has_the_seeds_conv_weights_and_layer_names():
    from mncli.compress.recipe import compute_layers, layer_roles
    from mncli.models import create_model

    with torch.device("meta"):
        model = create_model("mobilenetv2-rl1")
        base = create_model("mobilenetv2-rl1", width_mult=1.0)  # kuangliu's pytorch-cifar MobileNetV2
    assert _conv_weights(model) == 3_777_632
    # the seed README's "total weights: 3905632": its testers.py adds a fixed 1280 x 100 for the classifier
    assert _conv_weights(model) + 1280 * 100 == 3_905_632
    assert model.linear.weight.shape == (100, 1664)
    assert _conv_weights(base) == 2_249_024
    names = compute_layers(model)
    assert len(names) == 58  # the seed's 57 convs and 1 linear
    assert (names[0], names[-2], names[-1]) == ("conv1", "conv2", "linear")
    # the seed's config_mobile_v2_0.7.yaml lists shortcut convs at exactly these blocks
    assert [n for n in names if "shortcut" in n] == [f"layers.{i}.shortcut.0" for i in (0, 1, 10, 16)]
    roles = layer_roles(model)
    assert roles["conv1"] == "stem" and roles["linear"] == "classifier"
    assert roles["layers.3.conv2"] == "depthwise" and roles["layers.0.shortcut.0"] == "shortcut"


def test_rl1_network_runs_and_imports_a_seed_style_checkpoint(tmp_path, run_cli):
    from mncli.bundle import load_bundle
    from mncli.models import create_model

    torch.manual_seed(0)
    model = create_model("mobilenetv2-rl1").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    assert expected.shape == (2, 100) and torch.isfinite(expected).all()
    checkpoint = tmp_path / "cifar100_mobilenetv2.pt"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, checkpoint)  # DataParallel keys
    out = tmp_path / "rl1.safetensors"
    run = run_cli("import", checkpoint, "--arch", "mobilenetv2-rl1", "-o", out)
    assert run.code == 0, run.err
    with torch.no_grad():
        assert torch.equal(load_bundle(out).model.eval()(x), expected)


# --- layers by index


def test_index_patterns_name_the_seeds_layers():
    from mncli.compress.recipe import compute_layers, layer_index, match, resolve_recipe, select_layers
    from mncli.models import create_model

    with torch.device("meta"):
        model = create_model("mobilenetv2-rl1")
    names = compute_layers(model)
    assert [layer_index(p) for p in ("[3]", "QBNs[3]", "qbns[ 3 ]", "[-3]", "[Layers-3]", "layers.*")] == [
        3, 3, 3, -3, -3, None,
    ]  # fmt: skip
    assert match(names, "QBNs[Layers-3]") == match(names, "[-3]") == ["layers.16.shortcut.0"]
    assert match(names, "[0]") == ["conv1"] and match(names, "[-1]") == ["linear"]
    resolved = resolve_recipe(model, {p: {"weight_bits": 6} for p in SEED_QBNS}, [])
    assert list(resolved) == [names[i] for i in (3, 5, 8, 10, 11, 14, 16, 19, 55)]
    assert resolved["layers.0.conv3"] == {"weight_bits": 6}  # QBNs[3]
    assert select_layers(model, ["[1]", "[2]", "![2]"]) == ["layers.0.conv1"]
    for bad in ("[58]", "[-59]", "QBNs[Layers-59]"):
        with pytest.raises(BadInput, match="outside the model's 58 conv/linear layers"):
            match(names, bad)


def test_recipe_file_with_the_seeds_spelling_sets_per_layer_bits(tmp_path):
    from mncli.compress.quant.plan import RECIPE_KEYS, plan_layers
    from mncli.compress.recipe import load_recipe
    from mncli.models import create_model

    recipe = tmp_path / "qbns.yaml"
    recipe.write_text("layers:\n" + "".join(f"  {p}: {{weight_bits: 6}}\n" for p in SEED_QBNS))
    with torch.device("meta"):
        model = create_model("mobilenetv2-rl1")
    plans = plan_layers(model, {}, weight_bits=8, act_bits=8, recipe=load_recipe(recipe, RECIPE_KEYS))
    six = [i for i, plan in enumerate(plans.values()) if plan.weight_bits == 6]
    assert six == [3, 5, 8, 10, 11, 14, 16, 19, 55]
    assert all(p.weight_bits == 8 for i, p in enumerate(plans.values()) if i not in six)


def test_quantize_logs_the_layers_an_index_names_and_refuses_one_out_of_range(tmp_path, run_cli):
    src = tiny_artifact(tmp_path / "in.safetensors", args=ARGS, metrics={"score": None})
    recipe = tmp_path / "r.yaml"
    recipe.write_text('layers:\n  QBNs[1]: {weight_bits: 6}\n  "[-1]": {weight_bits: 8}\n')
    out = tmp_path / "q.safetensors"
    run = run_cli("quantize", src, "-d", SYN, "--ptq", "--recipe", recipe, "-o", out, "-v", *FAST)
    assert run.code == 0, run.err
    assert "layer QBNs[1] is conv2" in run.err and "layer [-1] is fc" in run.err
    assert _manifest(out)["compression"]["layers"]["conv2"]["weight"]["bits"] == 6
    recipe.write_text("layers:\n  QBNs[Layers-9]: {weight_bits: 6}\n")
    run = run_cli("quantize", src, "-d", SYN, "--ptq", "--recipe", recipe, "-o", tmp_path / "b.safetensors")
    _one_line_error(run, "QBNs[Layers-9]", "outside")
    assert not (tmp_path / "b.safetensors").exists()


# --- the exponential schedule


def test_exp_schedule_multiplies_the_lr_every_epoch(tmp_path, run_cli):
    from mncli.engine.optim import lr_factor
    from mncli.stages.training import TrainOptions

    cfg = TrainOptions(schedule="exp", exp_gamma=0.98, epochs=4).validate().config()
    factors = [lr_factor(cfg, step, steps_per_epoch=10) for step in (0, 9, 10, 25, 39)]
    assert factors == pytest.approx([1.0, 1.0, 0.98, 0.98**2, 0.98**3])
    out = tmp_path / "fp.safetensors"
    run = run_cli(
        "train", "--arch", "test-cnn", "--arch-opt", "input_size=16", "-d", SYN, "--epochs", "3",
        "--lr", "0.1", "--schedule", "exp", "--exp-gamma", "0.5", "-o", out, *FAST,
    )  # fmt: skip
    assert run.code == 0, run.err
    manifest = _manifest(out)
    assert [h["lr"] for h in manifest["metrics"]["history"]] == pytest.approx([0.1, 0.05, 0.025])
    assert manifest["params"]["train"]["schedule"] == "exp"


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (["--schedule", "exp", "--exp-gamma", "1.5"], ["--exp-gamma"]),
        (["--schedule", "expo"], ["expo", "exp"]),
    ],
    ids=["exp-gamma-above-one", "schedule-typo"],
)
def test_bad_schedule_options_are_one_line(tmp_path, run_cli, options, words):
    out = tmp_path / "fp.safetensors"
    run = run_cli("train", "--arch", "test-cnn", "-d", SYN, "--epochs", "1", *options, "-o", out)
    _one_line_error(run, *words)
    assert not out.exists()


# --- reweighted-L1 defaults (the seed's; AGP and the others keep theirs)


def test_reweighted_l1_trains_as_its_seed_by_default():
    from mncli.stages.prune import PruneConfig, Pruning
    from mncli.stages.training import TrainOptions

    rl1 = Pruning(PruneConfig(method="reweighted-l1", sparsity=0.7)).options(TrainOptions.unset())
    assert (rl1.epochs, rl1.optimizer, rl1.lr, rl1.weight_decay, rl1.batch_size) == (
        300,
        "adam",
        1e-3,
        0.0,
        64,
    )
    assert (rl1.schedule, rl1.exp_gamma) == ("exp", 0.98)
    agp = Pruning(PruneConfig(method="agp", sparsity=0.7)).options(TrainOptions.unset()).with_fallbacks()
    assert (agp.epochs, agp.optimizer, agp.lr, agp.weight_decay) == (40, "sgd", 0.01, 1e-4)
    assert (agp.schedule, agp.batch_size) == ("cosine", 128)


@pytest.mark.parametrize(
    ("method", "expected"),
    [("reweighted-l1", ("adam", 0.001, 0.0, 64, "exp")), ("agp", ("sgd", 0.01, 1e-4, 128, "cosine"))],
)
def test_the_methods_training_defaults_reach_the_command_line(tmp_path, run_cli, method, expected):
    src = tiny_artifact(tmp_path / "in.safetensors", args=ARGS, metrics={"score": None})
    out = tmp_path / "out.safetensors"
    fast = ["--val-size", "32", "--device", "cpu", "--max-steps-per-epoch", "1"]
    run = run_cli("prune", src, "-d", SYN, "-o", out, "-m", method, "-s", "0.5", "--epochs", "1", *fast)
    assert run.code == 0, run.err
    train = _manifest(out)["params"]["train"]
    assert (
        train["optimizer"],
        train["lr"],
        train["weight_decay"],
        train["batch_size"],
        train["schedule"],
    ) == (expected)


def test_reweighted_l1_boosts_the_lr_by_the_seeds_factor(tmp_path, run_cli):
    src = tiny_artifact(tmp_path / "in.safetensors", args=ARGS, metrics={"score": None})
    out = tmp_path / "rl1.safetensors"
    run = run_cli(
        "prune", src, "-d", SYN, "-o", out, "-m", "reweighted-l1", "--sparsity", "0.5", "--epochs", "2",
        "--retrain-epochs", "1", "--reweight-at", "1", "--schedule", "exp", *FAST,
    )  # fmt: skip
    assert run.code == 0, run.err
    record = _manifest(out)["compression"]["prune"]
    assert record["schedule"]["lr_boost"] == 1.6 and record["reweighting_rounds"] == 2


# --- the MIT search space


def _params_of(space, choices: list[str]) -> int:
    from mncli.models import build_model
    from mncli.search.supernet import derived_arch

    with torch.device("meta"):
        return sum(p.numel() for p in build_model(derived_arch(space, choices)).parameters())


def test_mit_space_holds_a_network_of_the_seeds_size():
    from mncli.stages.search import SearchConfig, build_space

    space = build_space(SearchConfig(space="mit-cifar100").validate(), 3, 32, 100)
    blocks = space.blocks()
    assert len(blocks) == 21 and set(space.ops) == {
        "k3_e3",
        "k3_e6",
        "k5_e3",
        "k5_e6",
        "k7_e3",
        "k7_e6",
        "zero",
    }
    largest = _params_of(space, ["k7_e6"] * len(blocks))
    smallest = _params_of(space, ["zero" if "zero" in b["choices"] else "k3_e3" for b in blocks])
    assert smallest < 2.0e6 and largest >= 5.77e6
    # e6 in the first n blocks, e3 in the rest: the sizes between step by at most one block
    sizes = [_params_of(space, ["k3_e6"] * n + ["k3_e3"] * (len(blocks) - n)) for n in range(len(blocks) + 1)]
    closest = min(sizes, key=lambda size: abs(size - 5.77e6))
    assert abs(closest - 5.77e6) / 5.77e6 < 0.02, sizes
    today = build_space(SearchConfig().validate(), 3, 32, 100)
    assert _params_of(today, ["k7_e6"] * len(today.blocks())) < 5.77e6 / 2


def test_mit_space_from_the_command_line_with_overrides(tmp_path, run_cli):
    out = tmp_path / "arch.safetensors"
    run = run_cli(
        "search", "-d", "synthetic:classes=4,shape=3x8x8,train=64,test=16", "--space", "mit-cifar100",
        "--widths", "8,8,8,8,8,8", "--repeats", "1,1,1,1,1,1", "--stem-channels", "8", "--head-channels", "0",
        "--ops", "k3_e3,zero", "--epochs", "1", "--weights-warmup-epochs", "0", "-o", out, *FAST,
    )  # fmt: skip
    assert run.code == 0, run.err
    manifest = _manifest(out)
    space = manifest["search"]["space"]
    assert manifest["params"]["space"] == "mit-cifar100"
    assert space["strides"] == [1, 2, 2, 1, 2, 1] and space["first_block"] == "ir_r1_k3_s1_e1_c24"
    assert space["widths"] == [8] * 6


def test_unknown_space_is_refused(tmp_path, run_cli):
    from mncli.stages.search import SearchConfig

    with pytest.raises(BadInput, match="unknown space 'mit'"):
        SearchConfig(space="mit").validate()
    out = tmp_path / "arch.safetensors"
    _one_line_error(run_cli("search", "-d", SYN, "--space", "mit", "-o", out), "--space", "mit-cifar100")
    assert not out.exists()
