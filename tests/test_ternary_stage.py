"""`mncli ternarize` end to end on tiny synthetic data: the artifact round trip, sizes, masks, bad input."""

import pytest
import torch

from conftest import tiny_artifact
from mncli.artifact import load_artifact
from mncli.bundle import load_bundle, save_bundle

DATA = "synthetic:classes=4,shape=1x12x12,train=64,test=32"
ARCH = {"in_channels": 1, "input_size": 12, "num_classes": 4, "width": 4}
FAST = ["-d", DATA, "--epochs", "1", "--batch-size", "32", "--device", "cpu"]


@pytest.fixture(scope="module")
def fp_artifact(tmp_path_factory):
    return tiny_artifact(tmp_path_factory.mktemp("tern") / "fp.safetensors", "test-resnet", ARCH)


@pytest.fixture(scope="module")
def pruned_artifact(fp_artifact):
    bundle = load_bundle(fp_artifact)
    modules = dict(bundle.model.named_modules())
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name in ("layer1.0.conv1", "layer2.0.conv2"):
            weight = modules[name].weight
            weight.mul_(torch.rand(weight.shape, generator=g) > 0.6)
            bundle.specs[name] = {"weight": {"format": "float", "bits": 32}, "mask": True, "method": "test"}
    path = fp_artifact.with_name("pruned.safetensors")
    save_bundle(bundle, path, stage="prune")
    return path


def assert_ternary_file(path, expected_layers: set[str]) -> dict:
    """Every ternary layer reloads to at most {-wn, 0, +wp} (wn, wp > 0), exactly the spec's numbers."""
    bundle = load_bundle(path)
    ternary = {n for n, s in bundle.specs.items() if s.get("weight", {}).get("format") == "ternary"}
    assert ternary == expected_layers
    modules = dict(bundle.model.named_modules())
    for name in ternary:
        spec = bundle.specs[name]["weight"]
        assert spec["bits"] == 2 and spec["wp"] > 0 and spec["wn"] > 0
        values = set(modules[name].weight.detach().unique().tolist())
        assert values <= {-spec["wn"], 0.0, spec["wp"]} and len(values) <= 3
        assert bundle.specs[name]["mask"] == (0.0 in values)
    return bundle


def test_ttq_round_trip_layers_and_bytes(fp_artifact, tmp_path, run_cli):
    out = tmp_path / "ttq.safetensors"
    run = run_cli("ternarize", fp_artifact, *FAST, "-o", out, "--json")
    assert run.code == 0, run.err
    result = run.json
    # default layers: block convs; the stem, the 1x1 shortcut and the classifier stay fp32
    blocks = {"layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1", "layer2.0.conv2"}
    bundle = assert_ternary_file(out, blocks)
    assert set(result["layers"]) == blocks and result["method"] == "ttq"
    assert result["score"] < result["score_before"]
    assert bundle.manifest["compression"]["ternarize"]["threshold"] == 0.05
    metrics = bundle.manifest["metrics"]
    assert {"val_acc", "test_acc", "val_acc_before", "test_acc_before", "score"} <= set(metrics)
    # file bytes of the ternary weights: within 10 % of the charge, 2n bits dense or n + 2*nnz sparse,
    # whichever is smaller (+ two scales), per layer
    tensors, _ = load_artifact(out)
    for name in blocks:
        stored = sum(t.numel() * t.element_size() for k, t in tensors.items()
                     if k.startswith(f"{name}.weight::") and not k.endswith("::shape"))  # fmt: skip
        numel = int(tensors[f"{name}.weight::shape"].prod())
        nnz = round(numel * (1 - bundle.specs[name]["sparsity"]))
        charged = min(2 * numel, numel + 2 * nnz) / 8 + 8
        assert abs(stored - charged) <= 0.1 * charged
        assert f"{name}.weight" not in tensors  # no dense copy
    assert (
        abs(result["ternary_bytes"] - result["ternary_bytes_charged"])
        <= 0.1 * result["ternary_bytes_charged"]
    )


def test_mit_variant_and_layer_patterns(fp_artifact, tmp_path, run_cli):
    out = tmp_path / "mit.safetensors"
    run = run_cli(
        "ternarize", fp_artifact, *FAST, "--variant", "mit", "--layers", "layer2.*",
        "--layers", "!*shortcut*", "-o", out, "--json",
    )  # fmt: skip
    assert run.code == 0, run.err
    result = run.json
    assert_ternary_file(out, {"layer2.0.conv1", "layer2.0.conv2"})
    assert result["method"] == "ttq-mit" and result["threshold"] == 0.7


def test_ec2t_keeps_pruned_zeros(pruned_artifact, tmp_path, run_cli):
    out = tmp_path / "ec2t.safetensors"
    run = run_cli(
        "ternarize", pruned_artifact, *FAST, "-m", "ec2t", "--retrain-epochs", "1", "--lambda-div", "0.175",
        "-o", out, "--json",
    )  # fmt: skip
    assert run.code == 0, run.err
    result = run.json
    before = dict(load_bundle(pruned_artifact).model.named_modules())
    after = assert_ternary_file(out, set(result["layers"]))
    modules = dict(after.model.named_modules())
    for name in ("layer1.0.conv1", "layer2.0.conv2"):
        pruned = before[name].weight == 0
        assert (modules[name].weight[pruned] == 0).all()
    assert result["pruned_layers_kept"] == ["layer1.0.conv1", "layer2.0.conv2"]
    assert (
        after.specs["layer1.0.conv1"]["lambda_div"] == 0.175
        and after.specs["layer1.0.conv1"]["method"] == "ec2t"
    )


def test_depthwise_excluded_by_default(tmp_path, run_cli):
    mbconv = {"in_channels": 1, "input_size": 12, "num_classes": 4}
    fp = tiny_artifact(tmp_path / "mb.safetensors", "test-mbconv", mbconv, seed=None)
    model = load_bundle(fp).model
    convs = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    depthwise = {n for n, m in convs.items() if m.groups > 1 and m.groups == m.in_channels}
    out = tmp_path / "mb_t.safetensors"
    run = run_cli("ternarize", fp, *FAST, "--epochs", "0", "-o", out, "--json")
    assert run.code == 0, run.err
    result = run.json
    assert depthwise and not depthwise & set(result["layers"])
    out2 = tmp_path / "mb_dw.safetensors"
    run = run_cli("ternarize", fp, *FAST, "--epochs", "0", "--include-depthwise", "-o", out2, "--json")
    assert run.code == 0, run.err
    result = run.json
    assert depthwise <= set(result["layers"])
    assert_ternary_file(out2, set(result["layers"]))


def test_bad_input(fp_artifact, tmp_path, run_cli):
    out = tmp_path / "bad.safetensors"
    run = run_cli("ternarize", fp_artifact, *FAST, "--threshold", "1.5", "-o", out)
    assert run.code == 2 and "outside (0, 1)" in run.err
    run = run_cli("ternarize", fp_artifact, *FAST, "--layers", "nothing.*", "-o", out)
    assert run.code == 2 and "matches no layer" in run.err
    arch_only = tmp_path / "arch.safetensors"
    tiny_artifact(arch_only, "test-resnet", ARCH, weights=False, stage="search")
    run = run_cli("ternarize", arch_only, *FAST, "-o", out)
    assert run.code == 2 and "architecture-only" in run.err
    run = run_cli("ternarize", fp_artifact, *FAST, "-m", "ttq", "--grid", "-o", out)
    assert run.code == 2 and "ec2t" in run.err
    tern = tmp_path / "t.safetensors"
    assert run_cli("ternarize", fp_artifact, *FAST, "--epochs", "0", "-o", tern).code == 0
    run = run_cli("ternarize", tern, *FAST, "-o", out)
    assert run.code == 2 and "already ternary" in run.err
    assert not out.exists()


def test_ec2t_grid_points_and_collect(fp_artifact, tmp_path, run_cli):
    out = tmp_path / "grid.safetensors"
    grid = ["-m", "ec2t", "--grid", "--ini-c", "0.45", "--lambda-div", "0.0,0.3", "--retrain-epochs", "0"]
    for k in (0, 1):
        run = run_cli("ternarize", fp_artifact, *FAST, *grid, "--point", k, "-o", out, "--json")
        assert run.code == 0, run.err
        assert (tmp_path / f"grid.point{k}.safetensors").exists()
    assert not out.exists()
    run = run_cli("ternarize", fp_artifact, *FAST, *grid, "--collect", "-o", out, "--json")
    assert run.code == 0, run.err
    result = run.json
    rows = {r["point"]: r for r in result["points"]}
    assert set(rows) == {0, 1}
    assert rows[1]["ternary_sparsity"] > rows[0]["ternary_sparsity"]  # larger lambda_div, more zeros
    best = max(rows.values(), key=lambda r: (r["val_acc"], r["ternary_sparsity"], -r["point"]))
    assert result["chosen"]["point"] == best["point"]
    manifest = load_bundle(out).manifest
    assert manifest["grid"]["chosen"] == best["point"] and manifest["params"]["grid_point"] == best["point"]


def test_dataset_defaults_to_the_one_the_input_was_trained_on(fp_artifact, tmp_path, run_cli):
    no_dataset = FAST[2:]
    out = tmp_path / "t.safetensors"
    run = run_cli("ternarize", fp_artifact, *no_dataset, "-o", out)
    assert run.code == 2 and "does not say which dataset" in run.err and not out.exists()
    trained = tmp_path / "trained.safetensors"  # an artifact that records its dataset
    assert run_cli("train", fp_artifact, *FAST, "-o", trained).code == 0
    run = run_cli("ternarize", trained, *no_dataset, "--epochs", "0", "-o", out)
    assert run.code == 0, run.err
    assert load_artifact(out)[1]["data"]["dataset"] == DATA


def test_choice_typos_fail_while_parsing(fp_artifact, tmp_path, run_cli):
    out = tmp_path / "typo.safetensors"
    for option, value in (("--method", "tqq"), ("--variant", "mitt"), ("--scale-init", "max"),
                          ("--select-by", "acc")):  # fmt: skip
        run = run_cli("ternarize", fp_artifact, *FAST, option, value, "-o", out)
        assert run.code == 2 and value in run.err, (option, run.err)
    assert not out.exists()


TTQ = {"epochs": 20, "optimizer": "sgd", "lr": 0.1, "nesterov": False, "weight_decay": 2e-4,
       "schedule": "step", "milestones": (10.0, 15.0, 18.0), "step_gamma": 0.1}  # fmt: skip
MIT = {"epochs": 30, "optimizer": "sgd", "lr": 0.01, "nesterov": True, "weight_decay": 1e-4,
       "schedule": "cosine", "milestones": ()}  # fmt: skip
EC2T = {"epochs": 20, "optimizer": "adam", "lr": 1e-4, "weight_decay": 5e-6, "schedule": "constant",
        "milestones": ()}  # fmt: skip


@pytest.mark.parametrize(
    ("method", "variant", "given", "expected"),
    [
        ("ttq", "paper", {}, TTQ),
        ("ttq", "mit", {}, MIT),
        ("ec2t", "paper", {}, EC2T),
        ("ttq", "paper", {"epochs": 8, "lr": 0.01, "milestones": (3.0,), "nesterov": True},
         {**TTQ, "epochs": 8, "lr": 0.01, "milestones": (3.0,), "nesterov": True}),
        ("ttq", "paper", {"epochs": 8}, {**TTQ, "epochs": 8, "milestones": (4.0, 6.0, 7.0)}),
    ],
)  # fmt: skip
def test_method_defaults_fill_the_training_options(method, variant, given, expected):
    """Training options not given take the method's original settings (TTQ's step decays at the
    paper's fractions of the epochs); given ones win."""
    from mncli.stages.ternarize import Ternarization, TernarizeConfig
    from mncli.stages.training import TrainOptions

    unset = dict.fromkeys(("epochs", "batch_size", "lr", "optimizer", "momentum", "nesterov",
                           "weight_decay", "schedule", "milestones", "step_gamma"))  # fmt: skip
    config = TernarizeConfig(method=method, variant=variant)
    opts = Ternarization(config).options(TrainOptions(**{**unset, **given}))
    assert opts.batch_size == 128 and opts.momentum == 0.9
    assert {key: getattr(opts, key) for key in expected} == expected


def test_new_training_options_reach_the_run(fp_artifact, tmp_path, run_cli):
    """--precision, --augment and --optimizer come from the shared training options."""
    out = tmp_path / "opts.safetensors"
    run = run_cli(
        "ternarize", fp_artifact, *FAST, "--precision", "fp32", "--augment", "none", "--optimizer", "adam",
        "--lr", "0.001", "-o", out, "--json",
    )  # fmt: skip
    assert run.code == 0, run.err
    result = run.json
    train = load_bundle(out).manifest["params"]["train"]
    assert train["precision"] == "fp32" and train["optimizer"] == "adam" and train["lr"] == 0.001
    assert train["schedule"] == "step" and train["weight_decay"] == 2e-4  # still TTQ's
    assert result["output"] == str(out)


def test_resume_without_checkpoint_starts_from_the_beginning(fp_artifact, tmp_path, run_cli):
    out = tmp_path / "resume.safetensors"
    run = run_cli("ternarize", fp_artifact, *FAST, "--resume", "-o", out)
    assert run.code == 0 and "no checkpoint" in run.err and out.exists()
    assert not (tmp_path / "resume.ckpt").exists()


def test_method_works_in_memory(fp_artifact, tmp_path):
    """check + apply on a Run built from a model, without files (the Python API's path)."""
    from mncli.stages.compression import Run
    from mncli.stages.ternarize import Ternarization, TernarizeConfig
    from mncli.stages.training import TrainOptions

    bundle = load_bundle(fp_artifact)
    method = Ternarization(TernarizeConfig(method="ec2t", retrain_epochs=1))
    opts = method.options(TrainOptions(dataset=DATA, epochs=1, batch_size=32, device="cpu")).validate()
    method.check(bundle.model, bundle.specs, bundle.arch, opts)
    run = Run(bundle.model, dict(bundle.specs), bundle.arch, opts.load_data(), opts)
    result = method.apply(run)
    assert result["method"] == "ec2t" and run.record["ternary_layers"] == len(result["layers"])
    assert {run.specs[n]["weight"]["format"] for n in result["layers"]} == {"ternary"}
    assert result["metrics"]["training"]["retrain"]["epochs"] == 1
    assert list(tmp_path.iterdir()) == []
