"""Layer formats: storage bits, weighted mults, claims checked against values, --infer, the freebie."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mncli.errors import BadInput
from mncli.models.quantized import install_act_quantizers
from mncli.scoring import score_model

N = 8 * 4 * 9  # weight elements of the conv below
OUT = 8 * 6 * 6  # its output elements


def tiny() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    ).eval()


def conv_row(report: dict) -> dict:
    return next(layer for layer in report["layers"] if layer["name"] == "0")


def score(model, specs=None, **kwargs) -> dict:
    return score_model(model, specs or {}, input_shape=(4, 6, 6), **kwargs)


def set_weight(model: nn.Sequential, values: torch.Tensor) -> None:
    with torch.no_grad():
        model[0].weight.copy_(values.reshape(model[0].weight.shape))


def ternary_values(nnz: int, wp: float = 0.5, wn: float = 0.25) -> torch.Tensor:
    values = torch.zeros(N)
    values[:nnz:2] = wp
    values[1:nnz:2] = -wn
    return values[torch.randperm(N, generator=torch.Generator().manual_seed(1))]


def int_values(bits: int, nnz: int | None = None, scale: float = 0.03) -> torch.Tensor:
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    codes = torch.arange(N) % (high - low + 1) + low
    codes[codes == 0] = 1
    if nnz is not None:
        codes[nnz:] = 0
    return codes.float() * scale


def test_ternary_codes2_and_sign1_storage():
    model = tiny()
    set_weight(model, ternary_values(100))
    specs = {"0": {"weight": {"format": "ternary", "bits": 2, "wp": 0.5, "wn": 0.25}, "mask": True}}
    row = conv_row(score(model, specs))
    assert row["storage_bits"] == 2 * 100 + N + 2 * 32
    assert row["sparsity"] == pytest.approx(1 - 100 / N)
    assert row["weight_format"] == "ternary"
    row = conv_row(score(model, specs, ternary_storage="sign1"))
    assert row["storage_bits"] == 100 + N + 2 * 32
    assert row["raw_mults"] == 100 * 36 and row["raw_adds"] == 100 * 36 - OUT


def test_ternary_mults_weighted_by_activation_bits_or_factorized():
    model = tiny()
    set_weight(model, ternary_values(120))
    specs = {"0": {"weight": {"format": "ternary", "bits": 2}, "act": {"bits": 8, "signed": False}}}
    install_act_quantizers(model, specs)
    dense = conv_row(score(model, specs))
    assert dense["mults"] == 120 * 36 * 8 / 32 and dense["act_bits"] == 8
    # the act quantizer's scale is a parameter; its rounding ops are folded into the layer
    assert dense["storage_bits"] == 2 * 120 + N + 64 + 32
    factorized = conv_row(score(model, specs, ternary_mults="factorized"))
    assert factorized["raw_mults"] == 2 * OUT and factorized["mults"] == 2 * OUT
    assert factorized["adds"] == dense["adds"]


def test_ternary_claim_contradicted_by_values_names_the_layer():
    model = tiny()
    values = ternary_values(100)
    values[0] = 0.7
    set_weight(model, values)
    with pytest.raises(BadInput, match="layer 0 claims ternary"):
        score(model, {"0": {"weight": {"format": "ternary", "bits": 2}}})
    set_weight(model, ternary_values(100))
    with pytest.raises(BadInput, match="wp"):
        score(model, {"0": {"weight": {"format": "ternary", "bits": 2, "wp": 0.9, "wn": 0.25}}})


def test_int_weights_counted_with_scale_and_checked_on_one_grid():
    model = tiny()
    set_weight(model, int_values(4, nnz=200))
    model[0].register_buffer("weight_scale", torch.tensor([0.03]))
    specs = {"0": {"weight": {"format": "int", "bits": 4, "per_channel": False}, "mask": True}}
    row = conv_row(score(model, specs))
    assert row["weight_format"] == "int4"
    assert row["storage_bits"] == 200 * 4 + N + 32
    with pytest.raises(BadInput, match="layer 0 claims 3-bit"):
        score(model, {"0": {"weight": {"format": "int", "bits": 3}}})
    del model[0].weight_scale  # without the buffer the grid is found from the values
    assert conv_row(score(model, specs))["storage_bits"] == 200 * 4 + N + 32
    with pytest.raises(BadInput, match="layer 0 claims 3-bit"):
        score(model, {"0": {"weight": {"format": "int", "bits": 3}}})


def test_per_channel_int_weights_store_one_scale_per_channel():
    model = tiny()
    codes = (torch.arange(N) % 7 - 3).float().reshape(8, -1)
    codes[codes == 0] = 2
    scales = torch.linspace(0.01, 0.08, 8).reshape(8, 1)
    set_weight(model, codes * scales)
    specs = {"0": {"weight": {"format": "int", "bits": 3, "per_channel": True}}}
    row = conv_row(score(model, specs))
    assert row["storage_bits"] == N * 3 + 8 * 32
    with pytest.raises(BadInput, match="not on one grid"):
        score(model, {"0": {"weight": {"format": "int", "bits": 3, "per_channel": False}}})


def test_fp16_claim_is_checked_and_counted_as_a_fact():
    model = tiny()
    with pytest.raises(BadInput, match="fp16"):
        score(model, {"0": {"weight": {"format": "float", "bits": 16}}})
    set_weight(model, model[0].weight.detach().half().float())
    row = conv_row(score(model, {"0": {"weight": {"format": "float", "bits": 16}}}))
    assert row["storage_bits"] == N * 16 and row["weight_bits"] == 16
    assert row["mults"] == row["raw_mults"]  # fp16 weights times fp32 activations: a 32-bit multiply


def test_infer_derives_formats_from_values():
    model = tiny()
    set_weight(model, ternary_values(150))
    assert conv_row(score(model, infer=True))["weight_format"] == "ternary"
    assert conv_row(score(model))["weight_format"] == "fp32"  # no claim, no --infer: counted as stored
    set_weight(model, int_values(3))
    row = conv_row(score(model, infer=True))
    assert row["weight_format"] == "int3" and row["storage_bits"] == N * 3 + 32
    set_weight(model, torch.randn(N))
    assert conv_row(score(model, infer=True))["weight_format"] == "fp32"
    set_weight(model, torch.randn(N).half().float())
    assert conv_row(score(model, infer=True))["weight_format"] == "fp16"


def test_sparse_float_tensor_pays_a_mask_and_saves_mults():
    model = tiny()
    values = torch.randn(N)
    values[: N // 4] = 0
    set_weight(model, values)
    row = conv_row(score(model))
    nnz = N - N // 4
    assert row["storage_bits"] == nnz * 32 + N
    assert row["raw_mults"] == nnz * 36 and row["raw_adds"] == nnz * 36 - OUT


def test_freebie16_halves_params_and_mults_not_adds():
    model = tiny()
    plain, free = score(model), score(model, freebie16=True)
    assert free["params"] == plain["params"] / 2
    assert free["mults"] == plain["mults"] / 2
    assert free["adds"] == plain["adds"]
    assert "16-bit freebie" in free["conventions"]["params"]


def test_freebie16_refused_below_16_bits():
    model = tiny()
    set_weight(model, ternary_values(100))
    with pytest.raises(BadInput, match="--freebie16 refused: layer 0 has ternary"):
        score(model, {"0": {"weight": {"format": "ternary", "bits": 2}}}, freebie16=True)
    model = tiny()
    specs = {"5": {"act": {"bits": 8}}}
    install_act_quantizers(model, specs)
    with pytest.raises(BadInput, match="8-bit activations"):
        score(model, specs, freebie16=True)


def test_add_bits_claim_and_verified_accumulator_width():
    model = tiny()
    plain, claimed = score(model), score(model, add_bits=16)
    assert claimed["adds"] == plain["adds"] / 2 and claimed["mults"] == plain["mults"]
    assert claimed["conventions"]["add_bits_is_claim"] and claimed["claims"]
    acc = score(model, {"0": {"acc_bits": 16}})
    assert conv_row(acc)["add_bits"] == 16 and acc["adds"] < plain["adds"]
    assert any("accumulator" in claim for claim in acc["claims"])


def test_activation_claim_needs_a_quantizer():
    with pytest.raises(BadInput, match="no activation quantizer"):
        score(tiny(), {"0": {"act": {"bits": 8}}})


def test_meta_model_is_counted_dense_by_its_claims_unverified():
    with torch.device("meta"):
        model = tiny()
    report = score(model, {"0": {"weight": {"format": "ternary", "bits": 2}}})
    assert not report["verified"]
    assert conv_row(report)["storage_bits"] == 2 * N + 64


def test_bad_options_are_bad_input():
    with pytest.raises(BadInput):
        score(tiny(), ternary_storage="codes3")
    with pytest.raises(BadInput):
        score(tiny(), ternary_mults="sparse")
    with pytest.raises(BadInput):
        score(tiny(), add_bits=0)
    with pytest.raises(BadInput):
        score(tiny(), task="coco")
