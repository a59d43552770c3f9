"""Structured pruning: coupled groups, residual safety, smaller models that rebuild from their shapes."""

import copy

import pytest
import torch
from torch import nn

from mncli.compress.prune.channels import prune_channels
from mncli.compress.prune.structured import channel_groups
from mncli.compress.recipe import select_layers
from mncli.errors import BadInput
from mncli.models import build_model, create_model, input_shape
from mncli.models.reshape import resize_to_shapes


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _group_of(groups, producer):
    return next(g for g in groups if producer in g.producers)


def _randomise_bn(model: nn.Module) -> None:
    """Non-trivial BN statistics, so a rebuild that lost them would show in the logits."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


def _silence_channels(model, producers, norms, channels):
    """Make `channels` exactly zero after each producer + BN (weights, beta and running mean zero)."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name in producers:
            modules[name].weight[channels] = 0
            if modules[name].bias is not None:
                modules[name].bias[channels] = 0
        for name in norms:
            modules[name].bias[channels] = 0
            modules[name].running_mean[channels] = 0


def _rebuilt_logits_match(model, x):
    """The pruned model rebuilt from arch + shapes alone, loaded with its state dict, agrees exactly."""
    rebuilt = build_model(model.arch)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    assert torch.equal(model(x), rebuilt(x))
    return rebuilt


def _record_shapes(model, report):
    model.arch = {**model.arch, "shapes": {**model.arch.get("shapes", {}), **report["shapes"]}}


def test_groups_of_a_plain_cnn_and_exact_removal_of_silent_channels():
    model = create_model("test-cnn").eval()
    _randomise_bn(model)
    groups = channel_groups(model, (3, 16, 16))
    conv2 = _group_of(groups, "conv2")
    assert conv2.norms == ["bn2"] and conv2.consumers == [("conv3", 1)] and not conv2.residual
    assert _group_of(groups, "fc").frozen == ["model output"]
    _silence_channels(model, ["conv2"], ["bn2"], [0, 3, 5])
    x = torch.randn(2, 3, 16, 16)
    before = model(x)
    report = prune_channels(
        model, (3, 16, 16), ratios=dict.fromkeys(select_layers(model), 0.5), criterion="zero"
    )
    assert model.conv2.out_channels == 13 and model.bn2.num_features == 13 and model.conv3.in_channels == 13
    assert model.conv1.out_channels == 8  # the stem is not selected
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)
    _record_shapes(model, report)
    _rebuilt_logits_match(model, x)


def test_flatten_into_linear_removes_each_channels_features():
    model = create_model("lenet5").eval()
    groups = channel_groups(model, (1, 28, 28))
    conv2 = _group_of(groups, "conv2")
    ((consumer, per_channel),) = conv2.consumers
    assert per_channel > 1  # the classifier-side linear reads C*H*W features
    _silence_channels(model, ["conv2"], [], [1, 4])
    x = torch.randn(2, 1, 28, 28)
    before = model(x)
    report = prune_channels(model, (1, 28, 28), ratios={"conv2": 0.5}, criterion="zero")
    assert dict(model.named_modules())[consumer].in_features == (conv2.channels - 2) * per_channel
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-5)
    _record_shapes(model, report)
    _rebuilt_logits_match(model, x)


def test_residual_channels_are_removed_only_when_every_member_loses_them():
    model = create_model("test-resnet").eval()
    _randomise_bn(model)
    shape = (3, 16, 16)
    groups = channel_groups(model, shape)
    inner = _group_of(groups, "layer2.0.conv1")
    assert not inner.residual and inner.consumers == [("layer2.0.conv2", 1)]
    res = _group_of(groups, "layer2.0.conv2")
    assert res.residual and set(res.producers) == {"layer2.0.conv2", "layer2.0.shortcut.0"}
    assert "conv1" in _group_of(groups, "layer1.0.conv2").producers  # identity shortcut joins the stem
    ratios = dict.fromkeys(select_layers(model), 0.5)

    l1 = copy.deepcopy(model)
    prune_channels(l1, shape, ratios=ratios, criterion="l1")
    assert l1.layer2[0].conv1.out_channels == 8  # inner channels halved
    assert l1.layer2[0].conv2.out_channels == 16 and l1.fc.in_features == 16  # residual untouched

    one_branch = copy.deepcopy(model)
    _silence_channels(one_branch, ["layer2.0.conv2"], ["layer2.0.bn2"], [2, 7])
    prune_channels(one_branch, shape, ratios=ratios, criterion="zero")
    assert one_branch.layer2[0].conv2.out_channels == 16  # the shortcut still carries them

    both = copy.deepcopy(model)
    _silence_channels(
        both, ["layer2.0.conv2", "layer2.0.shortcut.0"], ["layer2.0.bn2", "layer2.0.shortcut.1"], [2, 7]
    )
    x = torch.randn(2, *shape)
    before = both(x)
    report = prune_channels(both, shape, ratios=ratios, criterion="zero")
    assert both.layer2[0].conv2.out_channels == 14 and both.layer2[0].shortcut[0].out_channels == 14
    assert both.fc.in_features == 14
    torch.testing.assert_close(both(x), before, rtol=0, atol=1e-5)
    _record_shapes(both, report)
    _rebuilt_logits_match(both, x)


def test_mobilenetv2_prunes_expanded_channels_with_their_depthwise_conv():
    model = create_model("mobilenetv2-cifar", width_mult=0.25, num_classes=10).eval()
    _randomise_bn(model)
    shape = input_shape(model.arch)
    groups = channel_groups(model, shape)
    expanded = _group_of(groups, "blocks.1.expand")
    assert expanded.depthwise == ["blocks.1.dw"]
    assert set(expanded.norms) == {"blocks.1.expand_bn", "blocks.1.dw_bn"}
    assert expanded.consumers == [("blocks.1.project", 1)]
    residual = [g for g in groups if g.residual]
    assert residual and all(len(g.producers) >= 2 for g in residual)
    x = torch.randn(2, *shape)
    params = _count(model)
    residual_widths = {p: dict(model.named_modules())[p].out_channels for g in residual for p in g.producers}
    report = prune_channels(model, shape, ratios=dict.fromkeys(select_layers(model), 0.5))
    modules = dict(model.named_modules())
    assert modules["blocks.1.dw"].groups == modules["blocks.1.expand"].out_channels < expanded.channels
    assert {p: modules[p].out_channels for p in residual_widths} == residual_widths
    assert _count(model) < 0.7 * params
    _record_shapes(model, report)
    rebuilt = _rebuilt_logits_match(model, x)
    assert _count(rebuilt) == _count(model)


def test_squeeze_excite_gate_shrinks_with_the_expanded_channels():
    model = create_model("test-mbconv").eval()
    shape = input_shape(model.arch)
    groups = channel_groups(model, shape)
    gated = next(g for g in groups if any(p.endswith("se.expand") for p in g.producers))
    assert any(p.endswith(".expand") and ".se." not in p for p in gated.producers) or gated.depthwise
    report = prune_channels(model, shape, ratios=dict.fromkeys(select_layers(model), 0.5))
    x = torch.randn(2, *shape)
    assert model(x).shape == (2, 10)
    _record_shapes(model, report)
    _rebuilt_logits_match(model, x)


def test_resnet20_inner_channels_shrink_and_option_a_shortcuts_are_left_alone():
    model = create_model("resnet20").eval()
    shape = input_shape(model.arch)
    params = _count(model)
    report = prune_channels(model, shape, ratios=dict.fromkeys(select_layers(model), 0.25))
    assert model.layer1[0].conv1.out_channels == 12 and model.layer3[2].conv1.out_channels == 48
    assert model.layer3[2].conv2.out_channels == 64  # carried by the zero-padded shortcut
    assert _count(model) < params
    _record_shapes(model, report)
    _rebuilt_logits_match(model, torch.randn(1, *shape))


def test_bad_ratio_and_resize_errors():
    model = create_model("test-cnn")
    with pytest.raises(BadInput):
        prune_channels(model, (3, 16, 16), ratios={"conv2": 1.0})
    with pytest.raises(BadInput):
        prune_channels(model, (3, 16, 16), ratios={"conv2": 0.5}, criterion="l2")
    with pytest.raises(BadInput):
        resize_to_shapes(create_model("test-cnn"), {"nope": [1]})
    with pytest.raises(BadInput):
        resize_to_shapes(create_model("test-cnn"), {"relu1": [1]})
    resized = resize_to_shapes(create_model("test-cnn"), {"conv2.weight": [4, 8, 3, 3], "bn2": [4]})
    assert resized.conv2.weight.shape == (4, 8, 3, 3) and resized.bn2.running_mean.shape == (4,)


class _Shuffle(nn.Module):
    def forward(self, x):
        n, c, h, w = x.shape
        return x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


class _Pool(nn.Module):
    def forward(self, x):
        return torch.nn.functional.avg_pool2d(x, kernel_size=tuple(x.shape[-2:]))


class _Net(nn.Module):
    def __init__(self, mixer: nn.Module):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.mixer = mixer
        self.head = nn.Conv2d(8, 8, 1)
        self.pool = _Pool()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.head(self.mixer(self.conv(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def test_untraceable_parameter_free_modules_are_checked_for_channel_order():
    shuffled = channel_groups(_Net(_Shuffle()), (3, 8, 8))
    assert not _group_of(shuffled, "conv").prunable  # a channel shuffle mixes channel order
    assert _group_of(shuffled, "head").prunable  # the pooling helper keeps channels apart
    model = _Net(nn.Identity())
    assert _group_of(channel_groups(model, (3, 8, 8)), "conv").prunable
    prune_channels(model, (3, 8, 8), ratios={"conv": 0.5, "head": 0.5})
    assert model.conv.out_channels == 4 and model.head.in_channels == 4 and model.fc.in_features == 4


def test_fused_mbconv_blocks_prune_and_rebuild():
    blocks = ["fu_r1_k3_s2_e1_c16", "fu_r1_k3_s1_e2_c16", "ir_r1_k3_s2_e3_c24"]
    model = create_model("mbconv", blocks=blocks, head_channels=0, stem_channels=8, num_classes=10).eval()
    _randomise_bn(model)
    shape = input_shape(model.arch)
    hidden = _group_of(channel_groups(model, shape), "blocks.1.expand")
    assert hidden.consumers == [("blocks.1.project", 1)]
    params = _count(model)
    report = prune_channels(model, shape, ratios=dict.fromkeys(select_layers(model), 0.5))
    assert dict(model.named_modules())["blocks.1.expand"].out_channels < 32
    assert _count(model) < params
    _record_shapes(model, report)
    rebuilt = _rebuilt_logits_match(model, torch.randn(2, *shape))
    assert _count(rebuilt) == _count(model)
