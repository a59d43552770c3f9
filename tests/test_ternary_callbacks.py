"""The ternary callbacks in the engine's optimiser: own groups, no weight decay, clamps, phase 2 freeze."""

import torch
from torch import nn

from mncli.compress.ternary.common import attach, latent_weight
from mncli.compress.ternary.ec2t import EC2TCallback, EC2TWeight, make_layers_decay
from mncli.compress.ternary.ttq import TTQCallback, TTQWeight
from mncli.engine import TrainConfig
from mncli.engine.optim import param_groups


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 8, 3), nn.Flatten(), nn.Linear(128, 3)
    )


def _group_of(groups: list[dict], tensor: torch.Tensor) -> dict:
    return next(g for g in groups if any(p is tensor for p in g["params"]))


def test_ttq_scales_get_their_own_group_without_weight_decay_and_are_clamped():
    model = _model()
    layers = attach(model, ["2"], lambda n, w: TTQWeight(w, 0.05))
    callback = TTQCallback(model, layers, scale_lr=0.02)
    cfg = TrainConfig(lr=0.1, weight_decay=2e-4)
    groups = param_groups(model, cfg, [callback])
    scales = _group_of(groups, layers["2"].wp)
    assert (
        scales["lr"] == 0.02 and scales["weight_decay"] == 0.0 and _group_of(groups, layers["2"].wn) is scales
    )
    latent = _group_of(groups, latent_weight(model, "2"))
    assert latent["weight_decay"] == 2e-4 and latent["lr"] == 0.1
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))  # nothing twice
    with torch.no_grad():
        layers["2"].wp.fill_(-1.0)
    callback.after_step(None)
    assert abs(float(layers["2"].wp.detach()) - 1e-3) < 1e-9


def test_ec2t_groups_and_frozen_retraining():
    model = _model()
    decay = make_layers_decay(model, ["0", "2"])
    assert decay["2"] == 1.0 and decay["0"] < 1.0
    layers = attach(model, ["0", "2"], lambda n, w: EC2TWeight(w, 0.45, 0.15, decay[n]))
    cfg = TrainConfig(optimizer="adam", lr=1e-4, weight_decay=5e-6)
    groups = param_groups(model, cfg, [EC2TCallback(model, layers, 1e-4, 1e-5)])
    latent = _group_of(groups, latent_weight(model, "2"))
    centroids = _group_of(groups, layers["0"].wn)
    assert (latent["lr"], latent["weight_decay"]) == (1e-4, 0.0)
    assert (centroids["lr"], centroids["weight_decay"]) == (1e-5, 0.0)
    other = _group_of(groups, model[4].weight)
    assert other["weight_decay"] == 5e-6

    retrain = EC2TCallback(model, layers, 1e-4, 1e-5, retrain=True)
    groups = param_groups(model, cfg, [retrain])
    flat = [p for g in groups for p in g["params"]]
    assert not any(p is latent_weight(model, "2") for p in flat)
    assert any(p is layers["2"].wp for p in flat)
    before = layers["2"].assignment.clone()
    with torch.no_grad():
        latent_weight(model, "2").mul_(-1.0)
    retrain.after_step(None)
    assert torch.equal(layers["2"].assignment, before)  # the assignment is frozen in phase 2
