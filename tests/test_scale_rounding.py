"""Compound scaling: EfficientNet's rounding reproduces B1..B7 from B0; archs of every family scale."""

from __future__ import annotations

import pytest
import torch

from mncli.errors import BadInput
from mncli.models import build_model, create_model
from mncli.scaling.compound import (
    DEFAULT_GRID,
    grid_points,
    parse_grid,
    round_filters,
    round_repeats,
    scale_arch,
    scale_mbconv_blocks,
)

B0_CHANNELS = [32, 16, 24, 40, 80, 112, 192, 320, 1280]  # stem, 7 stages, head
B0_REPEATS = [1, 2, 2, 3, 3, 4, 1]
# (width, depth) of B1..B7 and their published channels (stem, stages, head) and repeats per stage.
PUBLISHED = {
    1: (1.0, 1.1, [32, 16, 24, 40, 80, 112, 192, 320, 1280], [2, 3, 3, 4, 4, 5, 2]),
    2: (1.1, 1.2, [32, 16, 24, 48, 88, 120, 208, 352, 1408], [2, 3, 3, 4, 4, 5, 2]),
    3: (1.2, 1.4, [40, 24, 32, 48, 96, 136, 232, 384, 1536], [2, 3, 3, 5, 5, 6, 2]),
    4: (1.4, 1.8, [48, 24, 32, 56, 112, 160, 272, 448, 1792], [2, 4, 4, 6, 6, 8, 2]),
    5: (1.6, 2.2, [48, 24, 40, 64, 128, 176, 304, 512, 2048], [3, 5, 5, 7, 7, 9, 3]),
    6: (1.8, 2.6, [56, 32, 40, 72, 144, 200, 344, 576, 2304], [3, 6, 6, 8, 8, 11, 3]),
    7: (2.0, 3.1, [64, 32, 48, 80, 160, 224, 384, 640, 2560], [4, 7, 7, 10, 10, 13, 4]),
}


@pytest.mark.parametrize("variant", sorted(PUBLISHED))
def test_rounding_matches_efficientnet_b1_to_b7(variant):
    width, depth, channels, repeats = PUBLISHED[variant]
    assert [round_filters(c, width) for c in B0_CHANNELS] == channels
    assert [round_repeats(n, depth) for n in B0_REPEATS] == repeats


def test_round_filters_rules():
    assert round_filters(3, 1.0) == 8  # never below the divisor
    assert round_filters(20, 1.0) == 24  # int(20 + 4) // 8 * 8
    assert round_filters(36, 1.0) == 40  # ties go up
    assert round_filters(44, 1.0) == 48
    assert round_repeats(7, 1.4**3.5) == 23  # EC2T's MicroNet winner: 23 blocks per stage


def _conv_shapes(arch):
    from mncli.models import build_model

    with torch.device("meta"):
        model = build_model(arch)
    return [
        tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
    ]


def test_scaling_efficientnet_b0_gives_b7():
    from mncli.models import resolve_args

    b0 = resolve_args("efficientnet-b0", {})[1]
    scaled = scale_arch({"name": "efficientnet-b0", "args": b0}, depth=3.1, width=2.0, resolution=600 / 224)
    b7 = {"name": "efficientnet-b7", "args": resolve_args("efficientnet-b7", {})[1]}
    assert scaled["args"]["input_size"] == 600
    assert _conv_shapes(scaled) == _conv_shapes(b7)


def test_scaling_an_mbconv_network_scales_each_stage():
    blocks = [
        "ir_r1_k3_s2_e3_c24",
        "ir_r1_k5_s1_e6_c24",
        "ir_r1_k3_s2_e6_c40",
        "ir_r2_k7_s1_e3_c40",
        "ir_r1_k3_s1_e6_c64",
    ]
    scaled = scale_mbconv_blocks(blocks, depth=1.5)
    # stage 24: 2 -> 3 blocks, stage 40: 3 -> ceil(4.5) = 5, stage 64: 1 -> 2; added blocks copy the last
    assert scaled == [
        "ir_r1_k3_s2_e3_c24",
        "ir_r2_k5_s1_e6_c24",
        "ir_r1_k3_s2_e6_c40",
        "ir_r4_k7_s1_e3_c40",
        "ir_r2_k3_s1_e6_c64",
    ]
    arch = {
        "name": "mbconv",
        "args": {"blocks": blocks, "num_classes": 10, "in_channels": 1, "input_size": 28},
    }
    out = scale_arch(arch, depth=1.5, width=1.2)
    assert out["args"]["blocks"] == scaled and out["args"]["width_mult"] == pytest.approx(1.2)
    assert out["args"]["input_size"] == 28


def test_scaling_micronet_cifar_reproduces_ec2t_winner():
    arch = {"name": "micronet-cifar", "args": {}}
    out = scale_arch(arch, depth=1.4**3.5, width=1.2**3.5)
    from mncli.models import build_model

    with torch.device("meta"):
        model = build_model(out)
    assert len(model.layer1) == 23
    assert [model.layer1[0].conv1.out_channels, model.layer2[0].conv1.out_channels] == [32, 64]
    assert model.layer3[0].conv1.out_channels == 120


def test_scaling_mobilenetv2_width_from_its_name():
    out = scale_arch({"name": "mobilenetv2-1.4", "args": {}}, depth=1.0, width=1.1)
    assert out["name"] == "mobilenetv2" and out["args"]["width_mult"] == pytest.approx(1.54)


def test_scaling_mobilenetv2_depth_adds_blocks_per_stage():
    out = scale_arch({"name": "mobilenetv2-cifar", "args": {}}, depth=1.2, width=1.0)
    assert out["name"] == "mobilenetv2-cifar" and out["args"]["depth_mult"] == pytest.approx(1.2)
    base = create_model("mobilenetv2-cifar")
    deeper = build_model(out)
    # repeats 1,2,3,4,3,3,1 -> ceil(1.2 n): 2,3,4,5,4,4,2
    assert len(deeper.blocks) == 24 and len(base.blocks) == 17
    assert sum(p.numel() for p in deeper.parameters()) > sum(p.numel() for p in base.parameters())


def test_scaling_a_model_without_multipliers_is_bad_input():
    with pytest.raises(BadInput, match="cannot be scaled"):
        scale_arch({"name": "resnet20", "args": {}}, depth=1.2, width=1.1)


def test_grid_parsing():
    assert parse_grid(None) == DEFAULT_GRID
    assert parse_grid("1.4,1.2; 1.2,1.3,1.1") == [(1.4, 1.2), (1.2, 1.3, 1.1)]
    points = grid_points(parse_grid("1.4,1.2"))
    assert points[0].gamma == 1.0
    depth, width, _ = points[0].multipliers(2.0)
    assert depth == pytest.approx(1.96) and width == pytest.approx(1.44)
    with pytest.raises(BadInput):
        parse_grid("1.4")
    with pytest.raises(BadInput):
        parse_grid("a,b")
