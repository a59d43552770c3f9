"""Laws of the count: more zeros never cost more ops (nor more storage once a tensor carries its mask),
fewer bits never cost more, and the per-layer rows always add up to the totals."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mncli.models.quantized import install_act_quantizers
from mncli.scoring import score_model

SHAPE = (3, 6, 6)
SETTINGS = settings(max_examples=20, deadline=None)


def model_with_zeros(seed: int, fractions: list[float]) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=True),
        nn.SiLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5),
    ).eval()
    with torch.no_grad():
        for layer, fraction in zip((model[0], model[3], model[7]), fractions, strict=True):
            flat = layer.weight.view(-1)
            order = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(seed))
            flat[order[: int(fraction * flat.numel())]] = 0
    return model


def score(model, specs=None, **kwargs) -> dict:
    return score_model(model, specs or {}, input_shape=SHAPE, **kwargs)


fractions = st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3)


@SETTINGS
@given(seed=st.integers(0, 1000), low=fractions, extra=fractions)
def test_more_zeros_never_cost_more(seed, low, extra):
    high = [min(1.0, a + b) for a, b in zip(low, extra, strict=True)]
    # randperm with one seed: the zeros at the higher fraction include those at the lower one
    sparse, sparser = score(model_with_zeros(seed, low)), score(model_with_zeros(seed, high))
    assert sparser["mults"] <= sparse["mults"] and sparser["adds"] <= sparse["adds"]
    for a, b in zip(sparse["layers"], sparser["layers"], strict=True):
        assert b["mults"] <= a["mults"] and b["adds"] <= a["adds"]
        if a["sparsity"]:  # already paying its 1-bit mask: more zeros only remove stored values
            assert b["params"] <= a["params"]


@SETTINGS
@given(seed=st.integers(0, 1000), low=fractions)
def test_going_sparse_costs_at_most_the_mask(seed, low):
    dense, sparse = score(model_with_zeros(seed, [0, 0, 0])), score(model_with_zeros(seed, low))
    masks = (
        sum(
            layer.weight.numel()
            for layer in model_with_zeros(seed, low)
            if hasattr(layer, "weight") and layer.weight.dim() > 1
        )
        / 32
    )
    assert sparse["params"] <= dense["params"] + masks
    assert sparse["ops"] <= dense["ops"]


@SETTINGS
@given(
    seed=st.integers(0, 1000),
    pair=st.lists(st.integers(2, 8), min_size=2, max_size=2),  # integer codes: each has one scale
    add_bits=st.integers(8, 32),
)
def test_fewer_bits_never_cost_more(seed, pair, add_bits):
    int2 = {"format": "int", "bits": 2}
    more = {"0": {"weight": int2, "act": {"bits": max(pair)}}}
    less = {"0": {"weight": int2, "act": {"bits": min(pair)}}}
    a = score(_with_quantizers(_int2_model(seed), more), more)
    b = score(_with_quantizers(_int2_model(seed), less), less)
    assert b["mults"] <= a["mults"] and b["params"] <= a["params"] and b["ops"] <= a["ops"]
    if min(pair) < max(pair):
        assert b["mults"] < a["mults"]  # int2 weights: the multiply is as wide as the activation
    model = model_with_zeros(seed, [0.3, 0.0, 0.5])
    assert score(model, add_bits=add_bits)["adds"] <= score(model)["adds"]
    assert score(model, freebie16=True)["score"] <= score(model)["score"]


def _int2_model(seed: int) -> nn.Module:
    model = model_with_zeros(seed, [0.0, 0.0, 0.0])
    codes = torch.randint(-2, 2, model[0].weight.shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        model[0].weight.copy_(codes.float() * 0.05)
    return model


def _with_quantizers(model: nn.Module, specs: dict) -> nn.Module:
    install_act_quantizers(model, specs)  # also a placeholder `weight_scale` for int layers
    if hasattr(model[0], "weight_scale"):
        model[0].weight_scale.fill_(0.05)
    return model


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
def test_int_weights_cost_fewer_bits_than_any_wider_claim(bits):
    torch.manual_seed(bits)
    model = model_with_zeros(bits, [0.0, 0.0, 0.0])
    high = 2 ** (bits - 1) - 1
    with torch.no_grad():
        codes = torch.randint(-high, high + 1, model[0].weight.shape).float()
        model[0].weight.copy_(codes * 0.01)
    costs = [score(model, {"0": {"weight": {"format": "int", "bits": b}}})["params"] for b in range(bits, 9)]
    assert costs == sorted(costs)
    assert costs[0] < score(model)["params"]


@SETTINGS
@given(
    seed=st.integers(0, 1000),
    low=fractions,
    freebie=st.booleans(),
    storage=st.sampled_from(["codes2", "sign1"]),
)
def test_rows_sum_to_totals(seed, low, freebie, storage):
    report = score(model_with_zeros(seed, low), freebie16=freebie, ternary_storage=storage, add_bits=16)
    for key in ("params", "mults", "adds"):
        assert sum(layer[key] for layer in report["layers"]) == pytest.approx(report[key], rel=1e-12)
    assert sum(layer["storage_bits"] for layer in report["layers"]) == report["storage_bits"]
    assert report["ops"] == pytest.approx(report["mults"] + report["adds"], rel=1e-12)
