"""Scoring conventions of the 2019 CIFAR-100 reproductions (issue 20), each with hand-computed numbers on
tiny models: the smaller of dense and sparse storage, the ternary storage conventions (codes2, sign1,
dense2), activations counted at the bits of their inputs, binary-tree accumulation, and --arch-opt
refused with an artifact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import tiny_artifact
from mncli.errors import BadInput
from mncli.models.quantized import install_act_quantizers
from mncli.scoring import score_model
from mncli.scoring.rules import tree_level_adds

SCALES = 2 * 32  # a ternary layer's wp and wn


def row(report: dict, name: str) -> dict:
    return next(layer for layer in report["layers"] if layer["name"] == name)


def with_zeros(values: torch.Tensor, zeros: int) -> torch.Tensor:
    """`values` (all non-zero) with the first `zeros` elements, in a fixed shuffled order, set to 0."""
    flat = values.reshape(-1).clone()
    order = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))
    flat[order[:zeros]] = 0
    return flat.reshape(values.shape)


def conv_model(c_in: int, c_out: int, k: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, bias=False), nn.ReLU()).eval()


def set_weight(layer: nn.Module, values: torch.Tensor) -> None:
    with torch.no_grad():
        layer.weight.copy_(values.reshape(layer.weight.shape))


# ---- 1. storage: the smaller of dense n*b and sparse nnz*b + n --------------------------------------


@pytest.mark.parametrize(
    ("zeros", "bits", "storage"),
    [(0, 32 * 32, "dense"), (1, 32 * 32, "dense"), (2, 30 * 32 + 32, "sparse"), (3, 29 * 32 + 32, "sparse")],
)
def test_fp32_weight_is_stored_dense_or_sparse_whichever_is_smaller(zeros, bits, storage):
    model = conv_model(2, 4, 2)  # n = 32 weights; sparse wins below 31 non-zeros (1 zero is a tie)
    values = torch.rand(32) + 0.5
    set_weight(model[0], with_zeros(values, zeros))
    layer = row(score_model(model, {}, input_shape=(2, 3, 3)), "0")
    assert (layer["storage_bits"], layer["storage"]) == (bits, storage)
    assert layer["sparsity"] == pytest.approx(zeros / 32)


def _int8_model(zeros: int) -> tuple[nn.Sequential, dict]:
    model = conv_model(4, 8, 3)  # n = 288
    codes = torch.arange(288) % 254 - 127
    codes[codes == 0] = 5
    model[0].register_buffer("weight_scale", torch.tensor([0.01]))
    set_weight(model[0], with_zeros(codes.float(), zeros) * 0.01)
    return model, {"0": {"weight": {"format": "int", "bits": 8, "per_channel": False}}}


@pytest.mark.parametrize(
    ("zeros", "bits", "storage"),
    [
        (16, 8 * 288, "dense"),  # 5.6 % zeros: 8n, not 8*272 + 288 = 8.55n
        (36, 8 * 288, "dense"),  # 12.5 %: 8*252 + 288 = 8n, a tie
        (37, 251 * 8 + 288, "sparse"),
    ],
)
def test_int8_weight_pays_its_mask_only_when_that_is_smaller(zeros, bits, storage):
    model, specs = _int8_model(zeros)
    layer = row(score_model(model, specs, input_shape=(4, 5, 5)), "0")
    assert layer["weight_format"] == "int8"
    assert (layer["storage_bits"], layer["storage"]) == (bits + 32, storage)  # + the weight scale


def test_conventions_state_the_storage_rule():
    report = score_model(conv_model(2, 4, 2), {}, input_shape=(2, 3, 3))
    assert "smaller" in report["conventions"]["sparse_storage"]
    assert all(layer["storage"] is None for layer in report["layers"] if layer["type"] == "relu")


# ---- 2. ternary storage conventions ------------------------------------------------------------------


def _ternary_model(nnz: int) -> tuple[nn.Sequential, dict]:
    model = conv_model(4, 8, 3)  # n = 288
    values = torch.where(torch.arange(288) % 2 == 0, torch.tensor(0.5), torch.tensor(-0.25))
    set_weight(model[0], with_zeros(values, 288 - nnz))
    return model, {"0": {"weight": {"format": "ternary", "bits": 2, "wp": 0.5, "wn": 0.25}}}


@pytest.mark.parametrize(
    ("nnz", "convention", "bits", "storage"),
    [
        (248, "codes2", 2 * 288, "dense"),  # TTQ at 14 % zeros: 2n, not 2*248 + 288
        (248, "sign1", 248 + 288, "sparse"),
        (248, "dense2", 2 * 288, "dense"),
        (100, "codes2", 2 * 100 + 288, "sparse"),
        (100, "sign1", 100 + 288, "sparse"),
        (100, "dense2", 2 * 288, "dense"),  # MIT's: dense 2-bit codes whatever the zeros
        (288, "sign1", 2 * 288, "dense"),  # no zeros: three states still need 2 bits
        (144, "codes2", 2 * 288, "dense"),  # 2*144 + 288 = 2n: a tie stays dense
    ],
)
def test_ternary_storage_conventions(nnz, convention, bits, storage):
    model, specs = _ternary_model(nnz)
    report = score_model(model, specs, input_shape=(4, 5, 5), ternary_storage=convention)
    layer = row(report, "0")
    assert (layer["storage_bits"], layer["storage"]) == (bits + SCALES, storage)
    assert report["conventions"]["ternary_storage"] == convention
    assert report["conventions"]["ternary_storage_rule"].startswith(
        {"codes2": "official", "sign1": "EC2T", "dense2": "MIT"}[convention]
    )


def test_dense2_is_n_over_16_plus_two_params():
    model, specs = _ternary_model(100)
    report = score_model(model, specs, input_shape=(4, 5, 5), ternary_storage="dense2")
    assert row(report, "0")["params"] == 288 / 16 + 2


# ---- 3. activations at the bits of their inputs -----------------------------------------------------

FP16 = {"weight": {"format": "float", "bits": 16}, "act": {"bits": 16, "signed": True, "method": "fp16"}}


def _fp16_model() -> nn.Sequential:
    """conv (3 -> 4, 3x3 on 8x8: 144 outputs) + BN + ReLU + global pool + flatten + linear (4 -> 5) + ReLU."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
        nn.ReLU(),
    ).eval()
    with torch.no_grad():
        for layer in (model[1], model[6]):
            layer.weight.copy_(layer.weight.half().float())
            if layer.bias is not None:
                layer.bias.copy_(layer.bias.half().float())
    return model


def test_ops_after_an_fp16_layer_count_16_bits_and_others_32():
    model = _fp16_model()
    specs = {"1": FP16}  # the conv runs in fp16; the linear stays fp32
    install_act_quantizers(model, specs)
    report = score_model(model, specs, input_shape=(3, 8, 8))
    expected = {  # name: (act bits, raw mults, weighted mults)
        "0": (32, 192, 192),  # on the model input
        "3": (16, 144, 72),  # after the fp16 conv and its batch norm
        "4": (16, 4, 2),  # global average pool: one mult per channel
        "7": (32, 5, 5),  # after the fp32 linear
    }
    for name, (bits, raw, weighted) in expected.items():
        layer = row(report, name)
        assert (layer["act_bits"], layer["mult_bits"]) == (bits, bits), name
        assert (layer["raw_mults"], layer["mults"]) == (raw, weighted), name
    assert row(report, "2")["adds"] == 144  # adds keep their width
    plain = score_model(_fp16_model(), {}, input_shape=(3, 8, 8))
    assert row(plain, "3")["mults"] == 144 and report["mults"] < plain["mults"]


def test_the_whole_chain_in_fp16_and_the_freebie():
    model = _fp16_model()
    specs = {"1": FP16, "6": FP16}
    install_act_quantizers(model, specs)
    report = score_model(model, specs, input_shape=(3, 8, 8))
    assert row(report, "7")["mults"] == 5 / 2 and row(report, "0")["mults"] == 192
    freebie = score_model(_fp16_model(), {}, input_shape=(3, 8, 8), freebie16=True)
    assert row(freebie, "0")["mults"] == 192 / 2 and row(freebie, "0")["act_bits"] == 32


@pytest.mark.parametrize(("wp", "relu_bits"), [(0.5, 16), (0.1, 32)])  # 0.1 is no fp16 value
def test_a_ternary_layer_with_fp16_scales_and_inputs_is_an_fp16_layer(wp, relu_bits):
    model, specs = _ternary_model(100)
    set_weight(model[0], torch.where(model[0].weight > 0, wp, model[0].weight))
    specs["0"] = {"weight": {"format": "ternary", "bits": 2}, "act": FP16["act"]}
    install_act_quantizers(model, specs)
    relu = row(score_model(model, specs, input_shape=(4, 5, 5)), "1")  # 8 x 3 x 3 outputs
    assert (relu["act_bits"], relu["mults"]) == (relu_bits, 72 * relu_bits / 32)


class HalfRelu(nn.Module):
    """A ReLU computed on a float16 tensor, between fp32 layers."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1, bias=False)

    def forward(self, x):
        x = torch.relu(x.to(torch.float16)).float()
        return torch.relu(self.conv(x))


def test_an_op_on_a_float16_tensor_counts_16_bits():
    report = score_model(HalfRelu().eval(), {}, input_shape=(3, 4, 4))
    half, plain = (layer for layer in report["layers"] if layer["type"] == "relu")
    assert (half["act_bits"], half["mults"]) == (16, 48 / 2)
    assert (plain["act_bits"], plain["mults"]) == (32, 32)


# ---- 5. binary-tree accumulation -------------------------------------------------------------------


def test_tree_level_adds():
    assert tree_level_adds(5) == [2, 1, 1]  # 5 -> 3 -> 2 -> 1 terms
    assert tree_level_adds(8) == [4, 2, 1]
    assert tree_level_adds(1) == [] and tree_level_adds(0) == []
    assert all(sum(tree_level_adds(k)) == k - 1 for k in range(1, 70))


def _int_linear(c_in: int, c_out: int, acc_tree=None, zeros: int = 0) -> tuple[nn.Module, dict]:
    model = nn.Sequential(nn.Linear(c_in, c_out), nn.ReLU(), nn.Linear(c_out, 2)).eval()
    codes = torch.arange(c_in * c_out) % 7 - 3
    codes[codes == 0] = 2
    specs = {}
    for layer, name, values in ((model[0], "0", with_zeros(codes.float(), zeros)), (model[2], "2", None)):
        if values is None:
            values = torch.ones(layer.weight.numel())
        layer.register_buffer("weight_scale", torch.tensor([0.05]))
        set_weight(layer, values * 0.05)
        specs[name] = {"weight": {"format": "int", "bits": 8}}
    if acc_tree is not None:
        specs["0"]["acc_tree"] = acc_tree
    return model, specs


@pytest.mark.parametrize(
    ("c_in", "c_out", "widths", "levels", "bias_bits"),
    [
        (5, 3, [18, 19], [(6, 18), (3, 19), (3, 19)], 19),  # k = 5: 2, 1, 1 adds per output
        (8, 2, [16, 17, 18], [(8, 16), (4, 17), (2, 18)], 18),  # k = 8: 4, 2, 1
        (5, 3, [18], [(6, 18), (3, 18), (3, 18)], 18),  # the last width repeats
    ],
)
def test_tree_accumulation_books_each_level_at_its_width(c_in, c_out, widths, levels, bias_bits):
    model, specs = _int_linear(c_in, c_out, widths)
    report = score_model(model, specs, input_shape=(c_in,), accumulation="tree")
    layer = row(report, "0")
    assert layer["raw_adds"] == (c_in - 1) * c_out + c_out  # the dot products, then the bias
    tree = layer["add_tree"]
    assert tree["terms"] == c_in
    assert [(level["adds"], level["bits"]) for level in tree["levels"]] == levels
    assert tree["bias"] == {"adds": c_out, "bits": bias_bits}
    expected = (sum(adds * bits for adds, bits in levels) + c_out * bias_bits) / 32
    assert layer["adds"] == expected and layer["add_bits"] == max(widths)
    assert report["adds"] == pytest.approx(sum(r["adds"] for r in report["layers"]), rel=1e-12)
    conventions = report["conventions"]
    assert conventions["accumulation"] == "tree" and conventions["tree_layers"] == 1
    assert report["warnings"] == ["1 layers have no proved tree widths (counted flat): 2"]
    assert any("adder tree" in claim for claim in report["claims"])


def test_tree_rounds_the_mean_dot_product_length_to_the_nearest_integer():
    model, specs = _int_linear(5, 2, [20], zeros=1)  # 9 non-zeros over 2 outputs: k = 4.5 -> 5
    layer = row(score_model(model, specs, input_shape=(5,), accumulation="tree"), "0")
    assert layer["add_tree"]["terms"] == 5 and layer["raw_adds"] == 9 - 2 + 2
    assert layer["adds"] == (2 + 1 + 1 + 1) * 2 * 20 / 32


def test_flat_accumulation_ignores_the_tree():
    model, specs = _int_linear(5, 3, [18, 19])
    flat = score_model(model, specs, input_shape=(5,))
    plain = score_model(*_int_linear(5, 3), input_shape=(5,))
    assert flat["adds"] == plain["adds"] and row(flat, "0")["add_tree"] is None
    assert row(flat, "0")["adds"] == 15 and flat["warnings"] == []
    assert flat["conventions"]["accumulation"] == "flat" and flat["conventions"]["tree_layers"] == 0


@pytest.mark.parametrize("widths", [[1], [33], [16.0], "16", [], [True], {"1": 16}])
def test_bad_acc_tree_is_bad_input_naming_the_layer(widths):
    model, specs = _int_linear(5, 3)
    specs["0"]["acc_tree"] = widths
    with pytest.raises(BadInput, match="layer 0: acc_tree"):
        score_model(model, specs, input_shape=(5,), accumulation="tree")


# ---- the command line: new choices, and --arch-opt refused with an artifact --------------------------


def test_cli_takes_the_new_choices(run_cli):
    argv = ["score", "--arch", "test-cnn", "--dataset", "cifar100", "--json"]
    result = run_cli(*argv, "--accumulation", "tree", "--ternary-storage", "dense2")
    assert result.code == 0, result.err
    conventions = result.json["conventions"]
    assert (conventions["accumulation"], conventions["ternary_storage"]) == ("tree", "dense2")
    bad = run_cli(*argv, "--accumulation", "wide")
    assert bad.code == 2 and "--accumulation" in bad.err


def test_arch_opt_with_an_artifact_is_refused(tmp_path, run_cli):
    path = tiny_artifact(tmp_path / "m.safetensors")
    result = run_cli("score", path, "--arch-opt", "width=2")
    assert result.code == 2 and result.out == ""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "--arch-opt only applies with --arch (no artifact)" in lines[0]
    both = run_cli("score", path, "--arch", "test-cnn")
    assert both.code == 2 and "exactly one" in both.err


def test_image_size_scores_an_artifact_at_another_resolution(tmp_path, run_cli):
    path = tiny_artifact(tmp_path / "m.safetensors", args={"num_classes": 4, "input_size": 16})
    own = run_cli("score", path, "--json")
    larger = run_cli("score", path, "--image-size", "32", "--json")
    assert own.code == 0 and larger.code == 0, (own.err, larger.err)
    assert "scoring at 32 px" in larger.err
    assert larger.json["params"] == own.json["params"]
    convs = [
        (a, b) for a, b in zip(own.json["layers"], larger.json["layers"], strict=True) if a["type"] == "conv"
    ]
    assert convs and all(b["raw_mults"] == 4 * a["raw_mults"] for a, b in convs)  # 4x the positions
    for argv, words in (
        ([path, "--image-size", "8000"], "--image-size must be"),
        (["--arch", "test-cnn", "--image-size", "32"], "--image-size applies to an artifact"),
    ):
        bad = run_cli("score", *argv)
        assert bad.code == 2 and bad.out == "" and words in bad.err, bad.err
        assert len(bad.err.strip().splitlines()) == 1
