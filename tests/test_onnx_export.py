"""`mncli export --format onnx`: every kind of artifact the demo makes (fp32, pruned, ternary, 8-bit
weights and activations on ternary, plus 4-bit and fp16 layers), built with the CLI on tiny data,
exported, checked by onnx.checker, stored the way its layers are, run by onnxruntime at the accuracy
`mncli eval` measures, and scored as the artifact is.

Tolerances (as `mncli.stages.export` states them): a graph without activation quantizers gives the
artifact's logits within 1e-4 absolute + 1e-4 relative (float sums in another order); with activation
quantizers, an input on a rounding boundary can land on the neighbouring code when the sums before it
are ordered differently, so 99 % of the images match within that tolerance and every logit within 5 %
of the largest. Top-1 on the artifact's test split is within 0.1 point of `mncli eval`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from mncli.bundle import load_bundle  # noqa: E402
from mncli.cli.app import main  # noqa: E402

# Every test reads the module's one chain: under `pytest -n` they share a worker, so it is built once.
pytestmark = pytest.mark.xdist_group("onnx-export-chain")

SYN = "synthetic:classes=4,shape=1x28x28,train=128,test=32"
DATA = ["--dataset", SYN]
# kind -> the CLI stage making it from an earlier kind (the demo's chain, then 4-bit and fp16 layers)
CHAIN = {
    "fp": ["train", "--arch", "fmnist-net-tiny", "--arch-opt", "num_classes=4", *DATA, "--epochs", "2"],
    "pruned": ["prune", "{fp}", *DATA, "--method", "agp", "--sparsity", "0.5", "--epochs", "1",
               "--start", "0", "--end", "1", "--freq", "1"],
    "ternary": ["ternarize", "{pruned}", *DATA, "--method", "ttq", "--epochs", "1", "--lr", "0.01"],
    "quantized": ["quantize", "{ternary}", *DATA, "--weight-bits", "8", "--act-bits", "8", "--epochs", "1"],
    "w4": ["quantize", "{fp}", *DATA, "--weight-bits", "4", "--act-bits", "4", "--epochs", "1"],
    "fp16": ["quantize", "{fp}", *DATA, "--weight-bits", "16", "--act-bits", "16", "--epochs", "1"],
}  # fmt: skip
KINDS = list(CHAIN)
QUANTIZED_INPUTS = {"quantized", "w4"}
ATOL = RTOL = 1e-4


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """kind -> (artifact, exported .onnx), made by the CLI."""
    folder = tmp_path_factory.mktemp("onnx_chain")
    paths = {}
    for kind, argv in CHAIN.items():
        art = folder / f"{kind}.safetensors"
        argv = [a.format(**{k: str(v[0]) for k, v in paths.items()}) for a in argv]
        assert main(["-q", *argv, "-o", str(art)]) == 0, kind
        out = folder / f"{kind}.onnx"
        assert main(["-q", "export", str(art), "-o", str(out), "--format", "onnx"]) == 0, kind
        paths[kind] = (art, out)
    return paths


def _session(path: Path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _logits(model, session, images):
    with torch.no_grad():
        expected = model(images).numpy()
    got = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    return expected, got


def _check_logits(expected, got, quantized_inputs: bool) -> None:
    close = np.abs(got - expected) <= ATOL + RTOL * np.abs(expected)
    if not quantized_inputs:
        assert close.all(), float(np.abs(got - expected).max())
        return
    # ONNX Runtime and PyTorch sum the pre-quantization activations in different orders, so a value on a
    # rounding boundary may take the next code: a row or 1 % of rows may differ (one of 32 did on a Zen 3
    # EPYC with AVX2), by a bounded amount.
    rows_off = int((~close.all(axis=1)).sum())
    assert rows_off <= max(1, len(close) // 100), rows_off
    assert float(np.abs(got - expected).max()) <= 0.05 * max(1.0, float(np.abs(expected).max()))


def _top1(session, split) -> float:
    right = total = 0
    for x, y in split:
        logits = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        right += int((logits.argmax(1) == y.numpy()).sum())
        total += len(y)
    return right / total


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_passes_the_checker_and_runs_at_the_accuracy_eval_measures(chain, kind, run_cli):
    from mncli.data import load_data

    art, path = chain[kind]
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = _session(path)
    data = load_data(SYN, batch_size=16)
    bundle = load_bundle(art)
    images = torch.cat([x for x, _ in data.test])
    expected, got = _logits(bundle.model.eval(), session, images)
    _check_logits(expected, got, kind in QUANTIZED_INPUTS)
    result = run_cli("eval", art, "--json")
    assert result.code == 0, result.err
    assert abs(_top1(session, data.test) - result.json["top1"]) <= 0.001
    # any batch size: the batch dimension is dynamic
    one = session.run(None, {session.get_inputs()[0].name: images[:1].numpy()})[0]
    np.testing.assert_allclose(one, got[:1], rtol=RTOL, atol=ATOL)


def _decoded_weights(path: Path, layers: list[str]) -> dict[str, np.ndarray]:
    """Each layer's weight as the graph computes it from what it stores, by onnxruntime itself."""
    from onnx import helper

    model = onnx.load(str(path))
    consumers = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            consumers[node.input[1]] = node
    names = {}
    for layer in layers:
        # the weight input of the layer's Conv/Gemm: the stored tensor itself, or what decodes it
        stored = f"{layer}.weight"
        names[layer] = stored if stored in consumers else f"{stored}_decoded"
        assert names[layer] in consumers, layer
        model.graph.output.append(helper.make_tensor_value_info(names[layer], onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    shape = [1, *[d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]]
    outputs = session.run([names[layer] for layer in layers], {"input": np.zeros(shape, np.float32)})
    return dict(zip(layers, outputs, strict=True))


def _initializers(path: Path) -> dict:
    return {i.name: i for i in onnx.load(str(path)).graph.initializer}


T = onnx.TensorProto


@pytest.mark.parametrize("kind", KINDS)
def test_layers_are_stored_as_the_artifact_has_them(chain, kind):
    from onnx import numpy_helper

    art, path = chain[kind]
    bundle = load_bundle(art)
    modules = dict(bundle.model.named_modules())
    layers = [n for n, m in modules.items() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    inits = _initializers(path)
    decoded = _decoded_weights(path, layers)
    model = onnx.load(str(path))
    ops = [node.op_type for node in model.graph.node]
    for layer in layers:
        weight = modules[layer].weight.detach()
        # the values the graph computes are the artifact's, bit for bit; pruned zeros stay exact zeros
        assert np.array_equal(decoded[layer], weight.numpy()), layer
        spec = (bundle.specs.get(layer) or {}).get("weight") or {"format": "float", "bits": 32}
        stored = inits[f"{layer}.weight"]
        codes = (
            numpy_helper.to_array(stored).astype(np.int64)
            if stored.data_type not in (T.FLOAT, T.FLOAT16)
            else None
        )
        if spec["format"] == "float":
            assert stored.data_type == (T.FLOAT16 if spec["bits"] == 16 else T.FLOAT), layer
        elif spec["format"] == "ternary":
            assert stored.data_type == T.INT2 and set(np.unique(codes)) <= {-1, 0, 1}, layer
            wp = float(numpy_helper.to_array(inits[f"{layer}.weight_wp"]))
            wn = float(numpy_helper.to_array(inits[f"{layer}.weight_wn"]))
            assert wp == pytest.approx(spec["wp"], rel=1e-6) and wn == pytest.approx(spec["wn"], rel=1e-6)
            assert np.array_equal(codes == 0, weight.numpy() == 0)
        else:
            assert stored.data_type == {8: T.INT8, 4: T.INT4}[spec["bits"]], (layer, spec)
            scale = numpy_helper.to_array(inits[f"{layer}.weight_scale"])
            assert np.allclose(
                scale.reshape(-1), modules[layer].weight_scale.reshape(-1).numpy(), rtol=0, atol=0
            )
            assert int(np.abs(codes).max()) <= 2 ** (spec["bits"] - 1)
    if kind in ("pruned", "ternary", "quantized"):
        pruned = [n for n in layers if (bundle.specs.get(n) or {}).get("mask")]
        assert pruned and all(float((decoded[n] == 0).mean()) >= 0.45 for n in pruned)
    quantized = [n for n in layers if getattr(modules[n], "act_quant", None) is not None]
    if kind in QUANTIZED_INPUTS:
        formats = [((bundle.specs.get(n) or {}).get("weight") or {}).get("format") for n in layers]
        dequantized = len(quantized) + formats.count("int") + 2 * formats.count("ternary")
        assert ops.count("DequantizeLinear") == dequantized
        assert ops.count("QuantizeLinear") == len(quantized)
        for layer in quantized:
            quantizer = modules[layer].act_quant
            scale = numpy_helper.to_array(inits[f"{layer}.act_quant.scale"])
            assert float(scale) == float(quantizer.scale)
            zero = inits[f"{layer}.act_quant.zero_point"]
            assert zero.data_type == (T.INT8 if quantizer.signed else T.UINT8)
            if quantizer.bits < 8:  # narrower codes clamped to [-Q_N, Q_P] inside the 8-bit type
                low = numpy_helper.to_array(inits[f"{layer}.act_quant.min"])
                high = numpy_helper.to_array(inits[f"{layer}.act_quant.max"])
                assert (int(low), int(high)) == (-quantizer.q_n, quantizer.q_p)
    elif kind == "fp16":
        assert quantized and ops.count("Cast") >= 2 * len(quantized)
        assert "QuantizeLinear" not in ops
    else:
        assert not quantized and "QuantizeLinear" not in ops


def test_export_json_says_what_each_layer_became(chain, run_cli, tmp_path):
    art, _ = chain["w4"]
    out = tmp_path / "w4.onnx"
    result = run_cli("export", art, "-o", out, "--format", "onnx", "--json")
    assert result.code == 0, result.err
    body = result.json
    assert body["format"] == "onnx" and body["output"] == str(out) and body["opset"] == 21
    assert body["layers"]["int"] == 13 and body["layers"]["act_int"] == 13 and body["layers"]["fp32"] == 0
    assert body["check"]["max_abs_diff"] <= 0.05 * max(1.0, body["check"]["max_abs_logit"])
    metadata = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert metadata["mncli.dataset"] == SYN and metadata["mncli.task"] == "synthetic"
    assert '"fmnist-net-tiny"' in metadata["mncli.arch"]
    table = run_cli("export", art, "-o", tmp_path / "t.onnx", "--format", "onnx", "--no-check")
    assert table.code == 0 and "13 int" in table.out and "onnxruntime" not in table.out
    assert not list(tmp_path.glob(".*.tmp*"))


def test_a_lower_opset_puts_codes_in_wider_types_and_keeps_their_bits(chain, run_cli, tmp_path):
    for kind in ("w4", "ternary"):
        art, _ = chain[kind]
        out = tmp_path / f"{kind}18.onnx"
        result = run_cli("export", art, "-o", out, "--format", "onnx", "--opset", "18", "--json")
        assert result.code == 0, result.err
        model = onnx.load(str(out))
        assert model.opset_import[0].version == 18
        types = {i.data_type for i in model.graph.initializer}
        assert T.INT4 not in types and T.INT2 not in types and T.INT8 in types
        session = _session(out)
        images = torch.randn(8, 1, 28, 28)
        expected, got = _logits(load_bundle(art).model.eval(), session, images)
        _check_logits(expected, got, kind in QUANTIZED_INPUTS)
        claims = {p.key: p.value for p in model.metadata_props}.get("mncli.weight_bits")
        assert (claims is not None) == (kind == "w4")  # ternary layers are ternary whatever holds the codes
        score_art = run_cli("score", art, "--json").json
        score_onnx = run_cli("score", out, "--json").json
        assert score_onnx["score"] == pytest.approx(score_art["score"], rel=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_exported_kinds_score_as_the_artifact(chain, kind, run_cli):
    art, path = chain[kind]
    flags = [[]]
    if kind == "fp":
        flags += [["--freebie16"], ["--add-bits", "16"]]
    if kind == "ternary":
        flags += [["--ternary-storage", "sign1", "--ternary-mults", "factorized"], ["--infer"]]
    for extra in flags:
        a = run_cli("score", art, "--json", *extra)
        o = run_cli("score", path, "--json", *extra)
        assert a.code == 0 and o.code == 0, (a.err, o.err)
        a, o = a.json, o.json
        for key in ("params", "mults", "adds", "ops", "score", "storage_bits"):
            assert o[key] == pytest.approx(a[key], rel=1e-12), (kind, extra, key)
        assert (
            o["task"] == a["task"] and o["accuracy"] == a["accuracy"] and o["conventions"] == a["conventions"]
        )
        weights = [
            (r["weight_format"], r["act_bits"], r["sparsity"]) for r in a["layers"] if r["weight_format"]
        ]
        got = [(r["weight_format"], r["act_bits"], r["sparsity"]) for r in o["layers"] if r["weight_format"]]
        assert got == weights
        names = [r["name"] for r in a["layers"] if r["weight_format"]]
        assert [r["name"] for r in o["layers"] if r["weight_format"]] == names


def test_fashion_mnist_top1_of_a_quantized_net_matches_eval(tmp_path, run_cli):
    """On real data (a 2,000-image training subset, the 10,000 test images): 8-bit weights and
    activations after post-training quantization, the artifact kind whose rounding matters most."""
    from mncli.data import load_data
    from mncli.errors import BadInput

    try:
        data = load_data("fashion-mnist", batch_size=500)
        data.test  # noqa: B018 - loads the test images
    except BadInput as exc:
        pytest.skip(f"Fashion-MNIST not available: {exc.message}")
    fp, q8 = tmp_path / "fp.safetensors", tmp_path / "q8.safetensors"
    common = ["--dataset", "fashion-mnist", "--subset", "2000", "--val-size", "500"]
    args = ["train", "--arch", "fmnist-net-tiny", *common, "--epochs", "1", "--lr", "0.1", "-o", fp]
    assert run_cli("-q", *args).code == 0
    result = run_cli("-q", "quantize", fp, *common, "--ptq", "-w", "8", "-a", "8", "-o", q8)
    assert result.code == 0, result.err
    out = tmp_path / "q8.onnx"
    assert run_cli("-q", "export", q8, "-o", out, "--format", "onnx").code == 0
    session = _session(out)
    evaluated = run_cli("eval", q8, "--json").json
    assert evaluated["count"] == 10000
    top1 = _top1(session, data.test)
    assert abs(top1 - evaluated["top1"]) <= 0.001, (top1, evaluated["top1"])
    images = torch.cat([x for x, _ in list(data.test)[:2]])
    expected, got = _logits(load_bundle(q8).model.eval(), session, images)
    _check_logits(expected, got, quantized_inputs=True)


def test_without_onnx_the_error_names_the_extra(chain, run_cli, tmp_path, monkeypatch):
    art, _ = chain["fp"]
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError
    out = tmp_path / "m.onnx"
    result = run_cli("export", art, "-o", out, "--format", "onnx")
    assert result.code == 2 and "Traceback" not in result.err
    assert "pip install 'mncli[onnx]'" in result.err and "onnx" in result.err
    assert not out.exists()
    assert run_cli("export", art, "-o", tmp_path / "m.pt").code == 0  # the other formats need no onnx


def test_bad_opsets_are_refused(chain, run_cli, tmp_path):
    art, _ = chain["fp"]
    result = run_cli("export", art, "-o", tmp_path / "m.onnx", "--format", "onnx", "--opset", "99")
    assert result.code == 2 and "--opset" in result.err
    result = run_cli("export", art, "-o", tmp_path / "m.pt", "--opset", "21")
    assert result.code == 2 and "--format onnx" in result.err


def test_help_names_onnx_and_imports_neither_torch_nor_onnx(run_cli):
    import subprocess

    result = run_cli("export", "--help")
    assert result.code == 0 and "--format onnx" in result.out and "mncli[onnx]" in result.out
    code = (
        "import sys; from mncli.cli.app import main\n"
        "for argv in (['export', '--help'], ['score', '--help']):\n"
        "    try: main(argv)\n"
        "    except SystemExit: pass\n"
        "print('torch' in sys.modules, 'onnx' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.stdout.strip().endswith("False False"), run.stdout[-200:]
