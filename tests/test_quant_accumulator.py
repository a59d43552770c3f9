"""Accumulator claims: the integer simulation's bounds cover every partial sum, a safe claim passes
and an overflowing one is refused with the layer and the bits it needs."""

import pytest
import torch
from torch import nn

from mncli.compress.quant.accumulator import bits_for_range, check_claim, simulate_accumulators
from mncli.errors import BadInput
from mncli.models.quantized import ActQuantizer, attach, set_int_weight


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1, bias=True)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(3 * 4 * 4, 5, bias=False)

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).flatten(1))


def int_model(weight_bits: int = 8, act_bits: int = 8):
    torch.manual_seed(0)
    model = TwoLayer()
    specs = {}
    for name, module, signed in (("conv", model.conv, True), ("fc", model.fc, False)):
        q_p = 2 ** (weight_bits - 1) - 1
        scale = module.weight.detach().abs().max().reshape(1) / q_p
        codes = torch.round(module.weight.detach() / scale).clamp(-q_p - 1, q_p)
        set_int_weight(module, scale, codes)
        attach(module, ActQuantizer(act_bits, signed, "lsq", scale=torch.tensor([0.05])))
        specs[name] = {"weight": {"format": "int", "bits": weight_bits, "per_channel": False}}
    return model, specs


def batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 2, 4, 4, generator=g) * 3, torch.zeros(8)) for _ in range(2)]


def brute_force_partial_sums(model: TwoLayer, data) -> tuple[int, int]:
    """Every running sum of the fc layer's integer dot products, in one sequential order."""
    fc = model.fc
    w = torch.round(fc.weight / fc.weight_scale).long()
    lo = hi = 0
    for x, _ in data:
        h = model.relu(model.conv(x)).flatten(1)
        xc = fc.act_quant.codes(h).long()
        for sample in xc:
            products = w * sample  # [out, in]
            running = products.cumsum(dim=1)
            lo, hi = min(lo, int(running.min())), max(hi, int(running.max()))
    return lo, hi


def test_bounds_cover_every_partial_sum():
    model, specs = int_model()
    model.eval()
    ranges = simulate_accumulators(model, specs, batches())
    lo, hi = brute_force_partial_sums(model, batches())
    assert ranges["fc"].min_negative <= lo and hi <= ranges["fc"].max_positive
    assert ranges["conv"].max_positive > 0 and ranges["conv"].min_negative < 0
    assert set(ranges) == {"conv", "fc"}


def test_bits_for_range():
    assert bits_for_range(-128, 127) == 8
    assert bits_for_range(-129, 0) == 9
    assert bits_for_range(0, 128) == 9
    assert bits_for_range(-1, 1) == 2


def test_safe_claim_passes_and_overflowing_claim_is_refused():
    model, specs = int_model()
    ranges = simulate_accumulators(model, specs, batches())
    needed = max(r.bits_needed for r in ranges.values())
    assert check_claim(ranges, needed) == {n: r.bits_needed for n, r in ranges.items()}
    worst = max(ranges, key=lambda n: ranges[n].bits_needed)
    with pytest.raises(
        BadInput, match=rf"layer {worst} needs {needed} bits.*--accumulator-bits {needed - 1}"
    ):
        check_claim(ranges, needed - 1)


def test_float_layers_cannot_claim():
    model, specs = int_model()
    ranges = simulate_accumulators(model, {}, batches())
    with pytest.raises(BadInput, match="no layer has integer weights"):
        check_claim(ranges, 16)
