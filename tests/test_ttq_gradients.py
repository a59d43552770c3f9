"""TTQ / EC2T gradients: the sign of dL/dWn (finite differences) and the scaled straight-through."""

import torch
import torch.nn.functional as F

from mncli.compress.ternary.ec2t import EC2TWeight
from mncli.compress.ternary.ttq import MITTernaryWeight, TTQWeight


def _loss(q: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(F.conv2d(x, q, padding=1), y)


def _setup(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64) * 0.2
    x = torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64)
    y = torch.randn(2, 4, 5, 5, generator=g, dtype=torch.float64)
    return latent, x, y


def _finite_difference(param: torch.nn.Parameter, loss_fn, eps: float = 1e-6) -> float:
    with torch.no_grad():
        param += eps
        up = float(loss_fn())
        param -= 2 * eps
        down = float(loss_fn())
        param += eps
    return (up - down) / (2 * eps)


def test_ttq_wn_gradient_matches_finite_difference_and_has_the_minus_sign():
    latent, x, y = _setup()
    p = TTQWeight(latent, threshold=0.05)
    loss = _loss(p(latent), x, y)
    loss.backward()
    numeric_wn = _finite_difference(p.wn, lambda: _loss(p(latent), x, y))
    numeric_wp = _finite_difference(p.wp, lambda: _loss(p(latent), x, y))
    assert abs(float(p.wn.grad) - numeric_wn) < 1e-6 * max(1.0, abs(numeric_wn))
    assert abs(float(p.wp.grad) - numeric_wp) < 1e-6 * max(1.0, abs(numeric_wp))
    assert numeric_wn != 0.0

    # dL/dWn = -sum_{w < -delta} g; the paper's equation (without the minus) has the opposite sign.
    q = p(latent).detach().requires_grad_(True)
    _loss(q, x, y).backward()
    neg = latent < -0.05 * latent.abs().max()
    assert torch.sign(p.wn.grad) == torch.sign(-q.grad[neg].sum())
    assert torch.sign(p.wn.grad) != torch.sign(q.grad[neg].sum())


def test_ec2t_centroid_gradients_match_finite_difference():
    latent, x, y = _setup(1)
    p = EC2TWeight(latent, ini_c=0.45)
    _loss(p(latent), x, y).backward()
    for param in (p.wp, p.wn):
        numeric = _finite_difference(param, lambda: _loss(p(latent), x, y))
        assert abs(float(param.grad) - numeric) < 1e-6 * max(1.0, abs(numeric))


def test_scaled_straight_through_gradient_to_latent():
    latent, x, y = _setup(2)
    latent = latent.clone().requires_grad_(True)
    p = TTQWeight(latent.detach(), threshold=0.05)
    q = p(latent)
    q.retain_grad()
    _loss(q, x, y).backward()
    delta = 0.05 * latent.detach().abs().max()
    pos, neg = latent.detach() > delta, latent.detach() < -delta
    g = q.grad
    expected = torch.where(pos, p.wp.detach() * g, torch.where(neg, p.wn.detach() * g, g))
    torch.testing.assert_close(latent.grad, expected)


def test_forward_values_are_exactly_ternary_and_masked_weights_get_no_gradient():
    latent, x, y = _setup(3)
    mask = torch.rand(latent.shape, generator=torch.Generator().manual_seed(0)) > 0.5
    latent = (latent * mask).requires_grad_(True)
    p = TTQWeight(latent.detach(), threshold=0.05, mask=mask)
    q = p(latent)
    assert set(q.detach().unique().tolist()) <= {-p.wn.item(), 0.0, p.wp.item()}
    _loss(q, x, y).backward()
    assert (latent.grad[~mask] == 0).all()


def test_mit_variant_identity_straight_through_and_scale_gradients():
    latent, x, y = _setup(4)
    latent = latent.clone().requires_grad_(True)
    p = MITTernaryWeight(latent.detach(), threshold=0.7)
    q = p(latent)
    q.retain_grad()
    _loss(q, x, y).backward()
    torch.testing.assert_close(latent.grad, q.grad)  # identity STE
    mag = latent.detach().abs()
    big = mag > 0.7 * mag.mean()
    scale = mag[big].mean()
    pos, neg = big & (latent.detach() > 0), big & (latent.detach() < 0)
    torch.testing.assert_close(p.wp.grad, scale * q.grad[pos].sum())
    torch.testing.assert_close(p.wn.grad, scale * q.grad[neg].sum())
    wp_eff, wn_eff = p.scales(latent.detach())
    assert wp_eff > 0 and wn_eff > 0
    assert abs(wp_eff - float(scale)) < 1e-12 and abs(wn_eff - float(scale)) < 1e-12


def test_clamps_keep_scales_proper():
    latent, _, _ = _setup(5)
    p = TTQWeight(latent)
    with torch.no_grad():
        p.wp.fill_(-0.5)
        p.wn.fill_(0.0)
    p.clamp_()
    assert p.wp.item() >= 1e-3 and p.wn.item() >= 1e-3
    m = MITTernaryWeight(latent)
    with torch.no_grad():
        m.wp.fill_(-0.2)
        m.wn.fill_(0.3)
    m.clamp_()
    wp_eff, wn_eff = m.scales(latent)
    assert wp_eff > 0 and wn_eff > 0
