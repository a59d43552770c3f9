"""SCORING.md's public reference numbers (acceptance tests, each within 0.05 %)."""

from __future__ import annotations

import pytest
import torch

from mncli.models import create_model
from mncli.scoring import score_model
from mncli.stages.score import ScoreConfig, run

TOL = 5e-4


def arch(name: str, dataset: str, **kwargs) -> dict:
    return run(ScoreConfig(arch=name, dataset=dataset, **kwargs))


def test_wrn_28_10_cifar100():
    report = arch("wrn-28-10", "cifar100")
    assert report["input_shape"] == [3, 32, 32]
    assert report["params"] == pytest.approx(36_527_908, rel=TOL)
    assert report["mults"] == pytest.approx(5_245_697_152, rel=TOL)
    assert report["adds"] == pytest.approx(5_244_286_848, rel=TOL)
    assert report["ops"] == pytest.approx(10_489_984_000, rel=TOL)
    assert report["score"] == pytest.approx(2.0008, abs=1e-4)  # fixed constants, never recomputed


def test_wrn_28_10_conv_and_fc_only():
    report = arch("wrn-28-10", "cifar100")
    layers = [row for row in report["layers"] if row["type"] in ("conv", "linear")]
    assert sum(row["params"] for row in layers) == pytest.approx(36_518_932, rel=TOL)
    assert sum(row["mults"] + row["adds"] for row in layers) == pytest.approx(10_484_175_872, rel=TOL)


def test_mobilenetv2_1_4_imagenet():
    report = arch("mobilenetv2-1.4", "imagenet")
    assert report["input_shape"] == [3, 224, 224]
    assert report["params"] == pytest.approx(6_084_808, rel=TOL)
    assert report["mults"] == pytest.approx(590_952_544, rel=TOL)
    assert report["adds"] == pytest.approx(582_584_464, rel=TOL)
    assert report["ops"] == pytest.approx(1_173_537_008, rel=TOL)


def test_efficientnet_b0_freebie16():
    report = arch("efficientnet-b0", "imagenet", freebie16=True)
    assert report["storage_bits"] == pytest.approx(84_280_640, rel=TOL)
    assert report["params"] == pytest.approx(2_633_770, rel=TOL)
    assert report["raw"]["mults"] == pytest.approx(406_623_188, rel=TOL)
    assert report["mults"] == pytest.approx(203_311_594, rel=TOL)
    assert report["adds"] == pytest.approx(394_550_748, rel=TOL)
    assert report["ops"] == pytest.approx(597_862_342, rel=TOL)


def test_efficientnet_b0_freebie16_at_half_sparsity_per_layer():
    torch.manual_seed(0)
    model = create_model("efficientnet-b0").eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
                flat = module.weight.view(-1)
                flat[flat.abs().argsort()[: flat.numel() // 2]] = 0
    report = score_model(model, {}, input_shape=(3, 224, 224), task="imagenet", freebie16=True)
    assert report["storage_bits"] == pytest.approx(47_627_296, rel=TOL)
    assert report["params"] == pytest.approx(1_488_353, rel=TOL)
    assert report["mults"] == pytest.approx(106_857_906, rel=TOL)
    assert report["adds"] == pytest.approx(201_643_372, rel=TOL)
    assert report["ops"] == pytest.approx(308_501_278, rel=TOL)


def test_efficientnet_family_scores_at_native_resolution_on_meta():
    report = arch("efficientnet-b3", "imagenet")
    assert report["input_shape"] == [3, 300, 300]
    assert report["params"] > arch("efficientnet-b0", "imagenet")["params"]
