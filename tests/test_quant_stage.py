"""`mncli quantize` end to end on tiny synthetic data: the artifact round trip, the CLI, bad input."""

import pytest
import torch

from conftest import tiny_artifact
from mncli.bundle import load_bundle, save_bundle
from mncli.compress.quant import qat
from mncli.compress.quant.lsq import LsqAct
from mncli.compress.quant.plan import plan_layers
from mncli.compress.quant.ptq import observe_inputs
from mncli.errors import BadInput
from mncli.stages.compression import Run
from mncli.stages.quantize import Calibration, Quantization, QuantizeConfig, QuantizeMethod
from mncli.stages.training import TrainOptions

DATA = "synthetic:classes=4,shape=1x12x12,train=192,test=64"
ARCH = {"in_channels": 1, "input_size": 12, "num_classes": 4, "width": 4}


@pytest.fixture(scope="module")
def fp_artifact(tmp_path_factory):
    return tiny_artifact(tmp_path_factory.mktemp("quant") / "fp.safetensors", "test-cnn", ARCH)


def test_round_trip_through_the_artifact_gives_identical_logits(fp_artifact, tmp_path):
    bundle = load_bundle(fp_artifact)
    model = bundle.model
    x = torch.randn(16, 1, 12, 12)
    plans = plan_layers(model, {}, weight_bits=3, act_bits=5)
    modules = dict(model.named_modules())
    stats = observe_inputs(model, {n: modules[n] for n in plans}, [(x, None)], 1)
    qat.prepare_qat(model, plans, stats, "lsq", {})
    bundle.specs = qat.bake(model, plans, {})
    model.eval()
    out = tmp_path / "q.safetensors"
    save_bundle(bundle, out, stage="quantize")
    again = load_bundle(out)
    with torch.no_grad():
        assert torch.equal(model(x), again.model(x))
    assert again.specs["conv2"]["weight"] == {"format": "int", "bits": 3, "per_channel": False}
    assert again.specs["conv1"]["act"] == {"bits": 8, "signed": True, "method": "lsq"}
    assert again.specs["conv2"]["act"]["signed"] is False


def test_cli_quantizes_and_scores_lower(fp_artifact, tmp_path, run_cli):
    out = tmp_path / "q4.safetensors"
    run = run_cli(
        "quantize", fp_artifact, "-d", DATA, "-o", out, "--epochs", "1", "--batch-size", "32", "--json"
    )
    assert run.code == 0, run.err
    result = run.json
    assert result["int_weight_layers"] == 4 and result["int_act_layers"] == 4
    quantized = load_bundle(out)
    assert quantized.specs["conv2"]["weight"]["bits"] == 4 and quantized.specs["fc"]["weight"]["bits"] == 8
    fp_score = load_bundle(fp_artifact).manifest["metrics"]["score"]["score"]
    assert quantized.manifest["metrics"]["score"]["score"] < 0.6 * fp_score


def test_cli_ptq_with_a_checked_accumulator_claim(fp_artifact, tmp_path, run_cli):
    out = tmp_path / "p8.safetensors"
    common = [fp_artifact, "-d", DATA, "--ptq", "-w", "8", "-a", "8", "-o", out, "--json"]
    run = run_cli("quantize", *common, "--accumulator-bits", "10")
    assert run.code == 2 and "accumulator overflow: layer" in run.err and "needs" in run.err
    assert not out.exists()
    run = run_cli("quantize", *common, "--accumulator-bits", "32")
    assert run.code == 0, run.err
    run = run_cli("quantize", *common[:-3], "-o", tmp_path / "p8b.safetensors", "--accumulator-bits", "31")
    assert run.code == 0, run.err
    specs = load_bundle(tmp_path / "p8b.safetensors").specs
    assert {s["acc_bits"] for s in specs.values()} == {31}
    assert all(s["acc_bits_needed"] <= 31 for s in specs.values())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--weight-bits", "0"], "--weight-bits 0 is not supported"),
        (["--act-bits", "33"], "--act-bits 33 is not supported"),
        (["--percentile", "20"], "--percentile 20.0 is outside (50, 100]"),
    ],
)
def test_bad_options_exit_2_with_one_line(fp_artifact, tmp_path, run_cli, args, message):
    run = run_cli("quantize", fp_artifact, "-d", DATA, "-o", tmp_path / "x.safetensors", *args)
    assert run.code == 2 and message in run.err and run.out == ""
    assert len([line for line in run.err.splitlines() if line.startswith("error")]) == 1


@pytest.mark.parametrize("flag, typo", [("--method", "xnor"), ("--calibration", "minimax")])
def test_a_choice_typo_is_rejected_while_parsing(fp_artifact, tmp_path, run_cli, flag, typo):
    out = tmp_path / "x.safetensors"
    run = run_cli("quantize", fp_artifact, "-d", DATA, "-o", out, flag, typo)
    assert run.code == 2 and typo in run.err and run.out == "" and not out.exists()


def test_unknown_method_from_python_is_bad_input():
    with pytest.raises(BadInput, match="unknown method 'xnor'"):
        QuantizeConfig(method="xnor").validate()
    config = QuantizeConfig(method="pact").validate()
    assert config.method is QuantizeMethod.PACT
    config = QuantizeConfig(ptq=True, calibration="percentile").validate()
    assert config.calibration is Calibration.PERCENTILE
    assert QuantizeConfig(calibration="percentile").validate().calibration is Calibration.PERCENTILE  # lsq
    assert QuantizeConfig().validate().calibration is None  # LSQ's own init
    with pytest.raises(BadInput, match="not dorefa's"):
        QuantizeConfig(method="dorefa", calibration="minmax").validate()


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
def test_lsq_step_sizes_start_at_the_calibrated_ranges_with_calibration(fp_artifact, per_channel):
    """Without --calibration LSQ starts at the paper's 2 * mean|v| / sqrt(Q_P); with minmax at
    max|v| / Q_P, the scale PTQ gives, so the fake-quantized net starts as the PTQ one."""
    x = torch.randn(16, 1, 12, 12)
    models = {}
    for calibration in (None, "minmax"):
        model = load_bundle(fp_artifact).model
        plans = plan_layers(model, {}, weight_bits=8, act_bits=8, recipe={"*": {"per_channel": per_channel}})
        modules = dict(model.named_modules())
        stats = observe_inputs(model, {n: modules[n] for n in plans}, [(x, None)], 1)
        qat.prepare_qat(model, plans, stats, "lsq", {}, calibration)
        models[calibration] = (model, stats)
    model, stats = models["minmax"]
    paper, _ = models[None]
    conv2, paper_conv2 = dict(model.named_modules())["conv2"], dict(paper.named_modules())["conv2"]
    weight = conv2.parametrizations.weight.original.detach().abs()
    top = weight.flatten(1).amax(1) if per_channel else weight.max()
    scale = conv2.parametrizations.weight[0].quantizer.scale.detach().flatten()
    assert scale.numel() == (conv2.out_channels if per_channel else 1)
    assert torch.allclose(scale, (top / 127).flatten())
    paper_scale = paper_conv2.parametrizations.weight[0].quantizer.scale.detach().flatten()
    mean = weight.flatten(1).mean(1) if per_channel else weight.mean()
    assert torch.allclose(paper_scale, (2 * mean / 127**0.5).flatten())
    act = next(m for m in conv2.modules() if isinstance(m, LsqAct))
    q_p = 127 if act.signed else 255
    assert act.scale.item() == pytest.approx(stats["conv2"].max_abs / q_p)
    paper_act = next(m for m in paper_conv2.modules() if isinstance(m, LsqAct))
    assert paper_act.scale.item() == pytest.approx(2 * stats["conv2"].first_mean_abs / q_p**0.5)


def test_recipe_with_an_unknown_key_is_refused(fp_artifact, tmp_path, run_cli):
    recipe = tmp_path / "r.yaml"
    recipe.write_text('layers:\n  "conv2": {weight_bits: 6, sparsity: 0.5}\n')
    run = run_cli("quantize", fp_artifact, "-d", DATA, "-o", tmp_path / "x.safetensors", "--recipe", recipe)
    assert run.code == 2 and "unknown key 'sparsity'" in run.err
    recipe.write_text('layers:\n  "conv2": {weight_bits: 6}\n  "fc": {act_bits: 32}\n')
    out = tmp_path / "r.safetensors"
    run = run_cli("quantize", fp_artifact, "-d", DATA, "-o", out, "--recipe", recipe, "--ptq", "--fp16")
    assert run.code == 0, run.err
    specs = load_bundle(out).specs
    assert specs["conv2"]["weight"]["bits"] == 6 and specs["conv3"]["weight"]["bits"] == 4
    assert specs["fc"]["act"] == {"bits": 16, "signed": True, "method": "fp16"}


def test_requantizing_and_int_weights_without_act_quantizers_load_back(fp_artifact, tmp_path, run_cli):
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    run = run_cli("quantize", fp_artifact, "-d", DATA, "--ptq", "-w", "6", "-a", "6", "-o", first)
    assert run.code == 0, run.err
    run = run_cli("quantize", first, "-d", DATA, "--ptq", "-w", "5", "-a", "32", "-o", second)
    assert run.code == 0, run.err
    specs = load_bundle(second).specs  # int weights, no act quantizer: weight_scale buffers must load
    assert specs["conv2"]["weight"]["bits"] == 5 and "act" not in specs["conv2"]


def test_training_defaults_and_manifest_params(fp_artifact, tmp_path, run_cli):
    method = Quantization(QuantizeConfig())
    opts = method.options(TrainOptions(epochs=None, lr=None, weight_decay=None))
    assert (opts.epochs, opts.lr, opts.weight_decay) == (3, 0.01, 1e-4)
    out = tmp_path / "q.safetensors"
    run = run_cli("quantize", fp_artifact, "-d", DATA, "-o", out, "--ptq", "--json")
    assert run.code == 0, run.err
    result = run.json
    assert result["output"] == str(out) and result["method"] == "ptq"
    params = load_bundle(out).manifest["params"]
    assert params["train"]["epochs"] == 3 and params["train"]["lr"] == 0.01
    assert params["train"]["weight_decay"] == 1e-4
    assert params["method"] == "lsq" and params["calibration"] == "minmax" and params["ptq"] is True


def test_the_method_runs_in_memory_and_keeps_pruned_zeros(fp_artifact):
    bundle = load_bundle(fp_artifact)
    model = bundle.model
    with torch.no_grad():
        model.conv2.weight[model.conv2.weight.abs() < model.conv2.weight.abs().median()] = 0.0
        model.fc.weight[:, ::2] = 0.0
    zeros = {"conv2": model.conv2.weight == 0, "fc": model.fc.weight == 0}
    specs = {"conv2": {"mask": True}, "fc": {"mask": True}}
    # conv2 trains as int codes, the classifier fc as floats (first and last layer left at 32 bits)
    method = Quantization(QuantizeConfig(weight_bits=4, act_bits=8, first_last_bits=32))
    train = method.options(TrainOptions(dataset=DATA, epochs=1, batch_size=32))
    data = train.load_data()
    method.check(model, specs, bundle.arch, train)
    run = Run(model=model, specs=specs, arch=bundle.arch, data=data, options=train)
    result = method.apply(run)
    assert result["int_weight_layers"] == 2 and run.record["method"] == "lsq"
    assert run.specs["fc"]["weight"] == {"format": "float", "bits": 32}
    assert run.specs["conv2"]["weight"]["format"] == "int" and run.specs["conv2"]["mask"] is True
    for name, zero in zeros.items():
        assert bool((model.get_submodule(name).weight[zero] == 0).all()), name
