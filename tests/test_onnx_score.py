"""`mncli score model.onnx`: the MicroNet score of any ONNX image classifier. An mncli artifact exported
to ONNX scores as the artifact; a network exported by plain `torch.onnx.export` scores as the artifact
path counts the same network in PyTorch; a QDQ model made by onnxruntime's `quantize_static` scores
as an independent count from its initializers by the rules of SCORING.md; unknown ops are refused."""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import mncli  # noqa: E402
from conftest import tiny_artifact  # noqa: E402

KEYS = ("params", "mults", "adds", "ops", "score", "storage_bits")


def _same(got: dict, expected: dict, keys=KEYS) -> None:
    for key in keys:
        assert got[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-9), key


def _export(model: nn.Module, shape, path, **kwargs) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(1, *shape),), str(path), **kwargs)


def _trained_looking(model: nn.Module) -> nn.Module:
    """Batch-norm statistics and biases away from their initial values, as after training (an exporter
    may drop an all-zero bias, which a trained network does not have)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
            elif isinstance(module, nn.Conv2d | nn.Linear) and module.bias is not None:
                module.bias.uniform_(-0.1, 0.1)
    return model.eval()


ZOO = ["test-mlp", "test-cnn", "test-resnet", "test-mbconv", "lenet5", "resnet20", "fmnist-net-tiny"]


@pytest.mark.parametrize("name", ZOO)
def test_zoo_models_exported_to_onnx_score_as_their_artifacts(tmp_path, run_cli, name):
    art = tiny_artifact(tmp_path / f"{name}.safetensors", name)
    out = tmp_path / f"{name}.onnx"
    assert run_cli("-q", "export", art, "-o", out, "--format", "onnx", "--no-check").code == 0
    a, o = run_cli("score", art, "--json"), run_cli("score", out, "--json")
    assert a.code == 0 and o.code == 0, o.err
    a, o = a.json, o.json
    _same(o, a)
    assert o["task"] == a["task"] and o["input_shape"] == a["input_shape"] and o["format"] == "onnx"
    weight_rows = [
        (r["name"], r["type"], r["shape"], r["params"], r["mults"], r["adds"]) for r in a["layers"]
    ]
    got_rows = [(r["name"], r["type"], r["shape"], r["params"], r["mults"], r["adds"]) for r in o["layers"]]
    conv = {"conv", "dwconv", "linear", "bn"}
    assert [r for r in got_rows if r[1] in conv] == [r for r in weight_rows if r[1] in conv]
    assert sorted(r[1:] for r in got_rows) == sorted(r[1:] for r in weight_rows)  # the same rows
    assert o["model"]["name"] == name


class _Mixed(nn.Module):
    """Ops beyond the zoo's: a grouped conv, ReLU6, x * sigmoid(x), hard-sigmoid gate, average pooling,
    a learned per-channel scale, tokens through a Linear on a 3-D tensor (MatMul + Add), mean over them."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False)
        self.gate = nn.Conv2d(8, 8, 1)
        self.gamma = nn.Parameter(torch.rand(1, 8, 1, 1) + 0.5)
        self.pool = nn.AvgPool2d(2)
        self.tokens = nn.Linear(8, 12)
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        x = torch.nn.functional.relu6(self.bn1(self.conv1(x)))
        y = self.conv2(x)
        y = y * torch.sigmoid(y)
        y = y * torch.nn.functional.hardsigmoid(self.gate(y.mean((2, 3), keepdim=True)))
        x = self.pool(x + y * self.gamma)
        t = self.tokens(x.flatten(2).transpose(1, 2))  # (N, 16, 12)
        return self.head(t.mean(1))


@pytest.mark.parametrize("dynamo", [True, False])
def test_a_graph_of_many_op_kinds_scores_as_the_artifact_path_counts_it(tmp_path, run_cli, dynamo):
    torch.manual_seed(0)
    model = _trained_looking(_Mixed())
    out = tmp_path / "mixed.onnx"
    _export(model, (3, 8, 8), out, dynamo=dynamo)
    result = run_cli("score", out, "--json", "--dataset", "cifar10")
    assert result.code == 0, result.err
    expected = mncli.score(model, input_shape=(3, 8, 8), task="cifar10")
    _same(result.json, expected)
    types = {r["type"] for r in result.json["layers"]}
    assert {"conv", "linear", "relu", "silu", "hardsigmoid", "scale", "avgpool", "tensor"} <= types


TORCHVISION = [("mobilenet_v3_small", (3, 64, 64), True), ("resnet18", (3, 32, 32), False)]


@pytest.mark.parametrize(("arch", "shape", "dynamo"), TORCHVISION)
def test_torchvision_networks_from_plain_torch_onnx_export(tmp_path, run_cli, arch, shape, dynamo):
    """Exported as anyone would (the dynamo exporter fuses each batch norm into its conv, which the
    rules count the same: c values and an add per element), against the artifact path's count."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = _trained_looking(getattr(torchvision.models, arch)(num_classes=10))
    out = tmp_path / f"{arch}.onnx"
    _export(model, shape, out, dynamo=dynamo)
    result = run_cli("score", out, "--json")
    assert result.code == 0, result.err
    body = result.json
    assert body["task"]["name"] == "cifar100" and body["input_shape"] == list(shape)
    _same(body, mncli.score(model, input_shape=shape))
    for extra in (["--freebie16"], ["--add-bits", "16"]):
        _same(
            run_cli("score", out, "--json", *extra).json,
            mncli.score(model, input_shape=shape, **_opts(extra)),
        )


def _opts(flags: list[str]) -> dict:
    return {"freebie16": True} if flags == ["--freebie16"] else {"add_bits": int(flags[1])}


def _count_qdq_by_hand(path, reference: dict) -> dict:
    """SCORING.md applied to the QDQ graph's stored tensors, without mncli.scoring: storage from the
    initializers, dot products from each layer's measured non-zero codes and its output positions (from
    the artifact path's count of the float network), the other ops from that count."""
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    role = {}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            for k, name in enumerate(node.input):
                role.setdefault(name, ("value", "scale", "zero_point")[k])
    bits = 0
    for name, value in inits.items():
        kind = role.get(name)
        if kind == "value" and value.dtype == np.int8:  # weights: the smaller of sparse and dense
            zero = inits[name.replace("_quantized", "_zero_point")].astype(np.int64)
            if zero.ndim:  # per output channel
                zero = zero.reshape(-1, *[1] * (value.ndim - 1))
            nnz, n = int((value.astype(np.int64) != zero).sum()), value.size
            bits += min(nnz * 8 + n, n * 8)
        elif kind == "value":  # int32 biases, dense
            bits += value.size * 32
        elif kind == "scale":
            bits += value.size * 32
        elif kind == "zero_point" and value.any():
            bits += value.size * 8
    rows = {r["name"]: r for r in reference["layers"]}
    mults = adds = 0.0
    dq_out = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        dq = dq_out[node.input[1]]
        codes, zero = inits[dq.input[0]].astype(np.int64), inits[dq.input[2]].astype(np.int64)
        if zero.ndim:
            zero = zero.reshape(-1, *[1] * (codes.ndim - 1))
        nnz = int((codes != zero).sum())
        layer = rows[dq.input[0].removesuffix("_quantized").removesuffix(".weight")]
        out = math.prod(layer["shape"])
        positions = out / layer["shape"][0] if node.op_type == "Conv" else 1
        dot = nnz * positions
        mults += dot * 8 / 32  # int8 weights x 8-bit activations
        adds += dot - out + (out if len(node.input) > 2 else 0)  # (L-1) N, + N for the bias
    for row in reference["layers"]:
        if row["type"] not in ("conv", "dwconv", "linear", "bn", "relu"):  # relus: folded by quantize_static
            mults, adds = mults + row["mults"], adds + row["adds"]
    params = bits / 32
    return {
        "params": params,
        "mults": mults,
        "adds": adds,
        "score": params / 36.5e6 + (mults + adds) / 10.49e9,
    }


def test_a_qdq_model_from_onnxruntime_quantize_static(tmp_path, run_cli):
    torchvision = pytest.importorskip("torchvision")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    torch.manual_seed(0)
    shape = (3, 32, 32)
    model = _trained_looking(torchvision.models.resnet18(num_classes=10))
    fp = tmp_path / "resnet18.onnx"
    _export(model, shape, fp)

    class Calibration(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(
                [{"x": np.random.RandomState(i).randn(1, *shape).astype(np.float32)} for i in range(4)]
            )

        def get_next(self):
            return next(self.batches, None)

    qdq = tmp_path / "resnet18_qdq.onnx"
    assert onnx.load(str(fp)).graph.input[0].name == "x"
    quantize_static(str(fp), str(qdq), Calibration(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)  # fmt: skip
    ops = {node.op_type for node in onnx.load(str(qdq)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops and "Relu" not in ops
    result = run_cli("score", qdq, "--json")
    assert result.code == 0, result.err
    body = result.json
    _same(
        body,
        _count_qdq_by_hand(qdq, mncli.score(model, input_shape=shape)),
        ("params", "mults", "adds", "score"),
    )
    layers = [r for r in body["layers"] if r["weight_format"]]
    assert len(layers) == 21 and {(r["weight_format"], r["act_bits"]) for r in layers} == {("int8", 8)}
    assert body["score"] < 0.3 * run_cli("score", fp, "--json").json["score"]


def _onnx_file(tmp_path, op: nn.Module, name: str):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), op, nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    out = tmp_path / f"{name}.onnx"
    _export(model, (3, 8, 8), out)
    return out


@pytest.mark.parametrize(
    ("module", "op"), [(nn.Tanh(), "Tanh"), (nn.GELU(), "Gelu"), (nn.Softplus(), "Softplus")]
)
def test_an_op_the_rules_do_not_know_is_refused_by_name(tmp_path, run_cli, module, op):
    out = _onnx_file(tmp_path, module, op)
    result = run_cli("score", out, "--json")
    assert result.code == 2 and result.out == "" and "Traceback" not in result.err
    assert f"ONNX op {op}" in result.err and "not in the MicroNet counting rules" in result.err


def test_symbolic_sizes_garbage_and_several_inputs_are_refused(tmp_path, run_cli):
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], np.ones(108, np.float32))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight],
    )  # fmt: skip
    dynamic = tmp_path / "dynamic.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(dynamic))
    result = run_cli("score", dynamic)
    assert result.code == 2 and "symbolic" in result.err and "fixed" in result.err
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not a protobuf at all" * 20)
    result = run_cli("score", garbage)
    assert result.code == 2 and "not an ONNX model" in result.err
    result = run_cli("score", tmp_path / "missing.onnx")
    assert result.code == 2 and "missing.onnx" in result.err
    graph.input.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3]))
    two = tmp_path / "two.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(two))
    result = run_cli("score", two)
    assert result.code == 2 and "one input" in result.err


def test_the_table_and_the_task_of_a_foreign_model(tmp_path, run_cli):
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1000)
    )
    out = tmp_path / "big.onnx"
    _export(model, (3, 128, 128), out)
    result = run_cli("score", out)
    assert result.code == 0, result.err
    assert "MicroNet score of" in result.out and "big.onnx" in result.out and "score " in result.out
    assert "imagenet" in result.out and "scoring it for imagenet" in result.err
    body = run_cli("score", out, "--json", "--dataset", "cifar100").json
    assert body["task"]["name"] == "cifar100" and body["baseline"]["name"] == "WideResNet-28-10"
    _same(body, mncli.score(model, input_shape=(3, 128, 128)))


def test_without_onnx_the_error_names_the_extra(tmp_path, run_cli, monkeypatch):
    out = _onnx_file(tmp_path, nn.ReLU(), "relu")
    assert run_cli("score", out, "--json").code == 0
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError
    result = run_cli("score", out)
    assert result.code == 2 and result.out == "" and "Traceback" not in result.err
    assert "pip install 'mncli[onnx]'" in result.err
    art = tiny_artifact(tmp_path / "a.safetensors", "test-mlp")
    assert run_cli("score", art, "--json").code == 0  # artifacts need no onnx
