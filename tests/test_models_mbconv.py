"""Block strings, EfficientNet rounding and the MBConv block that search and scale build on."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mncli.errors import BadInput
from mncli.models import create_model
from mncli.models.blocks import (
    DropPath,
    FusedMBConvBlock,
    MBConvBlock,
    SqueezeExcite,
    round_filters,
    round_repeats,
)
from mncli.models.mbconv import format_block, parse_block


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "ir_r2_k5_s2_e6_c40",
            {"repeats": 2, "kernel": 5, "stride": 2, "expand": 6, "channels": 40, "se_ratio": 0.0},
        ),
        (
            "ir_r1_k3_s1_e1_c16_se0.25",
            {"repeats": 1, "kernel": 3, "expand": 1, "channels": 16, "se_ratio": 0.25},
        ),
        ("IR_c24_e4.5_k7_s1_r3", {"repeats": 3, "kernel": 7, "stride": 1, "expand": 4.5, "channels": 24}),
    ],
)
def test_parse_block(text, expected):
    block = parse_block(text)
    assert block["type"] == "ir"
    assert {k: block[k] for k in expected} == expected


def test_format_is_the_canonical_inverse_of_parse():
    for text in (
        "ir_r2_k5_s2_e6_c40",
        "ir_r1_k3_s1_e1_c16_se0.25",
        "ir_r3_k7_s1_e4.5_c24",
        "fu_r1_k3_s2_e1_c24",
        "fu_r2_k5_s1_e4_c32_se0.25",
        "zero",
    ):
        assert format_block(parse_block(text)) == text
    assert format_block(parse_block("ir_c24_e4.5_k7_s1_r3")) == "ir_r3_k7_s1_e4.5_c24"
    assert format_block(kernel=5, stride=1, expand=3, channels=32) == "ir_r1_k5_s1_e3_c32"
    assert parse_block("zero") == {"type": "zero"}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ir",
        "ir_r2_k5_s2_e6",
        "ir_r2_k4_s2_e6_c40",
        "ir_r2_k5_s3_e6_c40",
        "ir_r0_k3_s1_e6_c8",
        "ir_r1_k3_s1_e6_c8_se2",
        "mb_r1_k3_s1_e6_c8",
        "fu_r1_k2_s1_e1_c8",
        "ir_r1_k3_s1_e6_c8_x9",
        "ir_r1_k3_s1_e0_c8",
    ],
)
def test_bad_block_strings_are_bad_input(text):
    with pytest.raises(BadInput):
        parse_block(text)


def test_round_filters_is_efficientnet_rounding():
    assert [round_filters(c, 1.2**3.5) for c in (16, 32, 64)] == [32, 64, 120]
    assert round_filters(32, 1.4) == 48 and round_filters(1280, 1.1) == 1408
    assert round_filters(3, 1.0) == 8  # never below 8
    assert round_filters(11.9, 1.0) == 16  # nearest multiple (8) loses > 10 %: go up
    for c in range(8, 400, 7):
        for w in (0.5, 1.0, 1.3, 1.9):
            r = round_filters(c, w)
            assert r % 8 == 0 and r >= 0.9 * c * w
    assert round_repeats(7, 1.4**3.5) == 23 and round_repeats(3, 1.0) == 3
    assert round_repeats(2, 1.1) == math.ceil(2.2)


def test_mbconv_block_layer_names():
    block = MBConvBlock(16, 24, kernel=5, stride=2, expand=6, se_ratio=0.25, act="swish")
    names = dict(block.named_children())
    assert {"expand", "expand_bn", "dw", "dw_bn", "se", "project", "project_bn"} <= set(names)
    assert block.expand.kernel_size == (1, 1) and block.expand.out_channels == 96
    assert block.dw.groups == block.dw.in_channels == 96 and block.dw.kernel_size == (5, 5)
    assert isinstance(block.se, SqueezeExcite) and block.se.reduce.out_channels == 4  # 0.25 * 16 inputs
    assert block.project.out_channels == 24 and not block.use_residual
    assert block(torch.randn(2, 16, 8, 8)).shape == (2, 24, 4, 4)
    plain = MBConvBlock(16, 16, expand=1, act="relu6")
    assert not hasattr(plain, "expand") and not hasattr(plain, "se") and plain.use_residual
    assert isinstance(plain.dw_act, nn.ReLU6)


def test_fused_block_is_a_dense_conv_then_a_projection():
    block = FusedMBConvBlock(16, 24, kernel=3, stride=2, expand=4, se_ratio=0.25, act="relu")
    assert block.expand.kernel_size == (3, 3) and block.expand.groups == 1
    assert block.expand.out_channels == 64 and block.project.kernel_size == (1, 1)
    assert block.se.reduce.out_channels == 4 and not block.use_residual
    assert block(torch.randn(2, 16, 8, 8)).shape == (2, 24, 4, 4)
    plain = FusedMBConvBlock(8, 16, kernel=3, stride=2, expand=1, act="relu").eval()
    assert not hasattr(plain, "project") and plain.expand.out_channels == 16
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():  # expand 1: exactly conv-BN-act, as fmnist-net's dense downsampling conv
        expected = torch.relu(plain.expand_bn(plain.expand(x)))
        torch.testing.assert_close(plain(x), expected)
    same = FusedMBConvBlock(8, 8, expand=2).eval()
    with torch.no_grad():
        same.project_bn.weight.zero_()
        same.project_bn.bias.zero_()
        assert same.use_residual and torch.equal(same(x), x)


def test_mbconv_network_builds_fused_blocks_from_strings():
    model = create_model(
        "mbconv", blocks=["fu_r1_k3_s2_e1_c16", "fu_r2_k3_s1_e2_c16", "ir_r1_k3_s2_e3_c24"], head_channels=0
    )
    kinds = [type(b).__name__ for b in model.blocks]
    assert kinds == ["FusedMBConvBlock"] * 3 + ["MBConvBlock"]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_residual_add_and_drop_path():
    block = MBConvBlock(8, 8, expand=3, drop_path=0.5).eval()
    x = torch.randn(1, 8, 4, 4)
    with torch.no_grad():
        for module in (block.project_bn,):
            module.weight.zero_()
            module.bias.zero_()
        assert torch.equal(block(x), x)  # branch is zero: the block is its shortcut
    assert isinstance(block.drop_path, DropPath)
    block.train()
    torch.manual_seed(0)
    drop = DropPath(0.5).train()
    y = drop(torch.ones(64, 1, 1, 1))
    assert set(y.flatten().tolist()) <= {0.0, 2.0} and 0 < (y == 0).sum() < 64
    assert torch.equal(DropPath(0.5).eval()(x), x)


def test_squeeze_excite_gates_each_channel():
    se = SqueezeExcite(6, 2, act="relu")
    x = torch.randn(3, 6, 5, 5)
    gate = torch.sigmoid(se.expand(se.act(se.reduce(x.mean((2, 3), keepdim=True)))))
    torch.testing.assert_close(se(x), x * gate)


def test_mbconv_network_scales_width_and_depth():
    blocks = ["ir_r1_k3_s1_e1_c16", "ir_r2_k5_s2_e6_c24_se0.25", "ir_r3_k3_s2_e3_c40"]
    base = create_model("mbconv", blocks=blocks, head_channels=320)
    scaled = create_model("mbconv", blocks=blocks, head_channels=320, width_mult=1.3, depth_mult=1.5)
    assert len(base.blocks) == 6 and len(scaled.blocks) == 2 + 3 + 5
    assert [b.c_out for b in base.blocks] == [16, 24, 24, 40, 40, 40]
    assert scaled.blocks[0].c_out == round_filters(16, 1.3) and scaled.blocks[-1].c_out == round_filters(
        40, 1.3
    )
    assert scaled.stem.conv.out_channels == round_filters(32, 1.3) and scaled.head.conv.out_channels == 416
    assert scaled.arch["args"]["blocks"] == blocks and scaled.arch["args"]["width_mult"] == 1.3
    assert scaled(torch.randn(1, 3, 32, 32)).shape == (1, 100)


def test_mbconv_network_options():
    model = create_model(
        "mbconv",
        blocks=["ir_r1_k3_s2_e6_c16_se0.25", "zero", "ir_r1_k7_s1_e3_c16"],
        act="swish",
        head_channels=0,
        stem_stride=2,
        num_classes=7,
        in_channels=1,
        input_size=28,
    )
    assert len(model.blocks) == 2 and not hasattr(model, "head")
    assert model.classifier.in_features == 16 and isinstance(model.stem.act, nn.SiLU)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    assert create_model("mbconv").arch["args"]["act"] == "relu6"
    with pytest.raises(BadInput):
        create_model("mbconv", blocks=["zero"])


def test_fused_e1_block_counts_as_the_plain_conv_it_is():
    from mncli.models.blocks import ConvBnAct
    from mncli.scoring import score_model

    fused = FusedMBConvBlock(16, 24, kernel=3, stride=2, expand=1, act="relu").eval()
    plain = ConvBnAct(16, 24, 3, 2, act="relu").eval()
    counts = [score_model(m, {}, input_shape=(16, 28, 28)) for m in (fused, plain)]
    assert counts[0]["ops"] == counts[1]["ops"] > 24 * 16 * 9 * 14 * 14
    assert counts[0]["params"] == counts[1]["params"]
