"""EC2T's entropy-constrained assignment: more zeros with a larger lambda_div, the P_0 floor, guards."""

import math

import torch

from mncli.compress.ternary.ec2t import (
    EC2TWeight,
    constraint_strength,
    entropy_constrained_codes,
    layer_decay,
    nearest_probabilities,
)


def _weights(n: int = 4000, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed)) * 0.1


def test_larger_lambda_div_gives_more_zeros():
    w = _weights()
    wp, wn = 0.45 * float(w.max()), 0.45 * abs(float(w.min()))
    zeros = []
    for lambda_div in (0.0, 0.05, 0.125, 0.15, 0.175, 0.3):
        codes, _ = entropy_constrained_codes(w, wp, wn, lambda_div, 1.0)
        zeros.append(int((codes == 0).sum()))
    assert zeros == sorted(zeros)
    assert zeros[-1] > zeros[0]
    assert all(0 < z < w.numel() for z in zeros)  # the layer stays ternary


def test_zero_lambda_is_nearest_centroid():
    w = _weights(seed=1)
    wp, wn = 0.2, 0.15
    codes, strength = entropy_constrained_codes(w, wp, wn, 0.0, 1.0)
    assert strength == 0.0
    centroids = torch.tensor([-wn, 0.0, wp])
    nearest = ((w[:, None] - centroids[None, :]) ** 2).argmin(dim=1) - 1
    assert torch.equal(codes.long(), nearest)


def test_chunked_argmin_equals_one_shot():
    w = _weights(5000, seed=2).reshape(50, 100)
    a, la = entropy_constrained_codes(w, 0.1, 0.12, 0.15, 0.8, chunk=333)
    b, lb = entropy_constrained_codes(w, 0.1, 0.12, 0.15, 0.8, chunk=1 << 20)
    assert torch.equal(a, b) and la == lb and a.shape == w.shape


def test_zero_probability_floor():
    w = torch.cat([torch.full((80,), 1.0), torch.full((20,), -1.0)])  # nothing near zero
    p = nearest_probabilities(w, 0.9, 0.9)
    assert abs(float(p.sum()) - 1.0) < 1e-12
    assert float(p[1]) == 0.5
    assert abs(float(p[2] / p[0]) - 4.0) < 1e-9  # mass taken in proportion


def test_strength_matches_the_lambda_max_formula():
    w = _weights(seed=3)
    wp, wn = 0.05, 0.06
    strength, info = constraint_strength(w, wp, wn, 0.15, 0.7)
    w_min, w_max = abs(float(w.min())), float(w.max())
    lmax_n = (w_min**2 - (wn - w_min) ** 2) / float(info[0] - info[1])
    lmax_p = (w_max**2 - (wp - w_max) ** 2) / float(info[2] - info[1])
    assert math.isclose(strength, 0.15 * 0.7 * min(lmax_n, lmax_p), rel_tol=1e-9)


def test_guard_when_a_side_has_the_information_of_zero(monkeypatch):
    import mncli.compress.ternary.ec2t as ec2t

    w = _weights(seed=6)
    monkeypatch.setattr(ec2t, "nearest_probabilities", lambda *a: torch.full((3,), 1 / 3))
    strength, _ = ec2t.constraint_strength(w, 0.1, 0.1, 0.15, 1.0)
    assert strength == 0.0  # both sides as informative as zero: no bound, plain nearest assignment
    monkeypatch.setattr(ec2t, "nearest_probabilities", lambda *a: torch.tensor([0.2, 0.5, 0.3]))
    strength, info = ec2t.constraint_strength(w, 0.1, 0.1, 0.15, 1.0)
    assert math.isfinite(strength) and strength > 0.0


def test_masked_weights_stay_zero_and_decay():
    w = _weights(seed=4) + 0.3
    mask = torch.arange(w.numel()) % 3 != 0
    codes, _ = entropy_constrained_codes(w, 0.2, 0.2, 0.15, 1.0, mask)
    assert (codes[~mask] == 0).all()
    assert layer_decay(10, 10) == 1.0
    assert math.isclose(layer_decay(0, 10), 0.05 / 1.05)


def test_layer_reassign_and_clamp():
    w = _weights(seed=5).reshape(40, 100)
    layer = EC2TWeight(w, ini_c=0.45, lambda_div=0.175)
    before = int((layer.assignment == 0).sum())
    with torch.no_grad():
        layer.wp.fill_(1e-9)
    layer.clamp_(w)
    assert float(layer.wp.detach()) >= 0.675 * float(w.std()) * (1 - 1e-6)
    layer.reassign_(w)
    assert layer.last_lambda > 0
    layer.frozen = True
    frozen = layer.assignment.clone()
    layer.reassign_(w * 3)
    assert torch.equal(layer.assignment, frozen)
    assert before > 0
