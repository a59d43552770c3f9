"""LSQ, PACT and DoReFa quantizer functions: values and gradients against hand computation."""

import math

import pytest
import torch

from mncli.compress.quant.dorefa import DorefaAct, DorefaWeight
from mncli.compress.quant.lsq import LsqAct, LsqWeight, lsq_grad_scale, lsq_init_scale, lsq_quantize
from mncli.compress.quant.pact import PactAct
from mncli.models.quantized import qrange


def test_qrange_signed_and_unsigned():
    assert qrange(4, signed=True) == (8, 7)
    assert qrange(4, signed=False) == (0, 15)
    assert qrange(8, signed=True) == (128, 127)


def test_lsq_value_and_gradients_match_the_paper():
    q_n, q_p, g = 8, 7, 0.25
    v = torch.tensor([-5.0, -0.63, 0.0, 0.2, 0.9, 3.1, 10.0], requires_grad=True)
    s = torch.tensor([0.4], requires_grad=True)
    out = lsq_quantize(v, s, q_n, q_p, g)
    upstream = torch.tensor([1.0, 2.0, -1.0, 0.5, 3.0, -2.0, 1.5])
    (out * upstream).sum().backward()

    ratio = v.detach() / 0.4
    inside = (ratio >= -q_n) & (ratio <= q_p)
    expected_value = torch.clamp(torch.round(ratio), -q_n, q_p) * 0.4
    torch.testing.assert_close(out.detach(), expected_value)
    # dv_hat/dv: 1 inside the range, 0 outside
    torch.testing.assert_close(v.grad, upstream * inside.float())
    # dv_hat/ds: -v/s + round(v/s) inside, -Q_N below, Q_P above; times the gradient scale
    local = torch.where(
        ratio < -q_n,
        torch.full_like(ratio, -float(q_n)),
        torch.where(ratio > q_p, torch.full_like(ratio, float(q_p)), -ratio + torch.round(ratio)),
    )
    expected_ds = g * float((upstream * local).sum())
    assert s.grad.item() == pytest.approx(expected_ds, rel=1e-5)
    assert v.detach()[0] / 0.4 < -q_n and v.detach()[-1] / 0.4 > q_p  # both clip branches exercised


def test_gradient_scale_and_init_formulas():
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3)
    quantizer = LsqWeight(w, bits=4)
    q_p = 7
    assert quantizer.g == pytest.approx(1.0 / math.sqrt(w.numel() * q_p))
    assert quantizer.scale.item() == pytest.approx(2 * w.abs().mean().item() / math.sqrt(q_p), rel=1e-6)
    per_channel = LsqWeight(w, bits=4, per_channel=True)
    assert per_channel.scale.shape == (16, 1, 1, 1)
    expected = 2 * w.abs().mean(dim=(1, 2, 3)) / math.sqrt(q_p)
    torch.testing.assert_close(per_channel.scale.detach().flatten(), expected)
    assert per_channel.g == pytest.approx(1.0 / math.sqrt(8 * 9 * q_p))
    assert lsq_grad_scale(100, 15) == pytest.approx(1 / math.sqrt(1500))
    assert lsq_init_scale(torch.tensor([1.0, -3.0]), 4).item() == pytest.approx(2 * 2.0 / 2.0)


def test_lsq_act_scale_gradient_uses_features_per_sample():
    torch.manual_seed(0)
    x = torch.relu(torch.randn(4, 3, 5, 5))
    act = LsqAct(bits=4, signed=False)
    act.train()
    act(x)  # first batch initialises s
    assert act.scale.item() == pytest.approx(2 * x.abs().mean().item() / math.sqrt(15), rel=1e-6)
    act.scale.grad = None
    out = act(x)
    out.sum().backward()
    s = act.scale.item()
    ratio = x / s
    local = torch.where(ratio > 15, torch.full_like(ratio, 15.0), -ratio + torch.round(ratio))
    expected = float(local.sum()) / math.sqrt(3 * 5 * 5 * 15)
    assert act.scale.grad.item() == pytest.approx(expected, rel=1e-4)


def test_pact_alpha_gradient_is_one_above_the_clip():
    x = torch.tensor([-1.0, 0.5, 2.0, 4.0, 7.0])
    act = PactAct(bits=2, signed=False, alpha=3.0)
    act.train()
    out = act(x)
    out.sum().backward()
    assert act.alpha.grad.item() == pytest.approx(2.0)  # x = 4 and x = 7 are >= alpha
    step = 3.0 / 3
    torch.testing.assert_close(out.detach(), torch.tensor([0.0, 0.0, 2.0, 3.0, 3.0]) * step)
    act.eval()
    torch.testing.assert_close(act(x), out.detach())


def test_dorefa_weight_codes_keep_zeros_and_fit_the_grid():
    torch.manual_seed(0)
    w = torch.randn(6, 4)
    w[0, :2] = 0.0
    quantizer = DorefaWeight(w, bits=3)
    scale, codes = quantizer.deployed(w)
    assert int(codes.abs().max()) <= 3 and int(codes[0, 0]) == 0 and int(codes[0, 1]) == 0
    torch.testing.assert_close(quantizer(w), codes.float() * scale)
    act = DorefaAct(bits=2, signed=False)
    act.train()
    levels = torch.unique(act(torch.linspace(-1, 2, 50)) * 3)
    torch.testing.assert_close(levels, torch.tensor([0.0, 1.0, 2.0, 3.0]))
