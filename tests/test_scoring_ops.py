"""Every op type the counter knows, against counts computed by hand from SCORING.md's table."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mncli.errors import BadInput
from mncli.scoring import score_model


def score(model: nn.Module, shape, specs=None, **kwargs) -> dict:
    return score_model(model.eval(), specs or {}, input_shape=shape, **kwargs)


def rows(report: dict, kind: str) -> list[dict]:
    return [layer for layer in report["layers"] if layer["type"] == kind]


class Wrap(nn.Module):
    """A model from a plain function of its input (functional ops outside any module)."""

    def __init__(self, fn, *children: nn.Module):
        super().__init__()
        self.fn = fn
        self.body = nn.ModuleList(children)

    def forward(self, x):
        return self.fn(self, x)


def test_conv_then_bn_folds_bn_as_bias():
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4))
    report = score(model, (2, 5, 5))
    (conv,) = rows(report, "conv")
    (bn,) = rows(report, "bn")
    out = 4 * 5 * 5
    assert conv["params"] == 2 * 4 * 9 and conv["mults"] == 18 * out and conv["adds"] == 17 * out
    assert bn["params"] == 4 and bn["adds"] == out and bn["mults"] == 0
    assert report["params"] == 76 and report["ops"] == 18 * out + 17 * out + out


def test_conv_own_bias_counts_once_and_merges_into_following_bn():
    alone = score(nn.Sequential(nn.Conv2d(2, 4, 3, bias=True)), (2, 5, 5))
    out = 4 * 3 * 3
    assert alone["params"] == 72 + 4
    assert alone["adds"] == 17 * out + out
    merged = score(nn.Sequential(nn.Conv2d(2, 4, 3, bias=True), nn.BatchNorm2d(4)), (2, 5, 5))
    (conv,) = rows(merged, "conv")
    assert conv["params"] == 72 and conv["adds"] == 17 * out
    assert merged["params"] == 72 + 4 and merged["adds"] == 17 * out + out


def test_depthwise_conv_is_not_divided_by_groups_twice():
    report = score(nn.Sequential(nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False)), (6, 4, 4))
    (conv,) = rows(report, "dwconv")
    out = 6 * 4 * 4
    assert conv["params"] == 6 * 9 and conv["mults"] == 9 * out and conv["adds"] == 8 * out


def test_grouped_and_strided_conv_use_traced_output_size():
    report = score(nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2, bias=False)), (4, 7, 7))
    (conv,) = rows(report, "conv")
    out = 8 * 4 * 4  # ceil(7 / 2) = 4
    assert conv["shape"] == [8, 4, 4]
    assert conv["mults"] == 2 * 9 * out and conv["adds"] == (2 * 9 - 1) * out


def test_linear_with_bias_and_conv1d():
    report = score(nn.Sequential(nn.Flatten(), nn.Linear(12, 5)), (3, 2, 2))
    (fc,) = rows(report, "linear")
    assert fc["params"] == 65 and fc["mults"] == 60 and fc["adds"] == 11 * 5 + 5
    report = score(nn.Sequential(nn.Conv1d(3, 4, 3, bias=False)), (3, 10))
    (conv,) = rows(report, "conv")
    assert conv["mults"] == 9 * 4 * 8 and conv["adds"] == 8 * 4 * 8


@pytest.mark.parametrize(
    ("module", "mults", "adds"),
    [
        (nn.ReLU(), 1, 0),
        (nn.ReLU6(), 1, 0),
        (nn.Hardtanh(), 1, 0),
        (nn.SiLU(), 3, 1),
        (nn.Sigmoid(), 2, 1),
        (nn.Hardswish(), 3, 1),
        (nn.Hardsigmoid(), 2, 1),
    ],
)
def test_activation_modules(module, mults, adds):
    report = score(nn.Sequential(module), (3, 4, 5))
    assert report["mults"] == mults * 60 and report["adds"] == adds * 60
    assert len(report["layers"]) == 1


@pytest.mark.parametrize(
    ("fn", "mults", "adds"),
    [
        (lambda m, x: F.relu(x), 1, 0),
        (lambda m, x: torch.relu(x), 1, 0),
        (lambda m, x: x.relu(), 1, 0),
        (lambda m, x: F.relu6(x), 1, 0),
        (lambda m, x: x.clamp(0, 6), 1, 0),
        (lambda m, x: F.silu(x), 3, 1),
        (lambda m, x: x * torch.sigmoid(x), 3, 1),  # a hand-written swish: sigmoid 2+1, then 1 mult
        (lambda m, x: torch.sigmoid(x), 2, 1),
        (lambda m, x: F.hardswish(x), 3, 1),
        (lambda m, x: x * 2.0, 1, 0),
        (lambda m, x: x / 6, 1, 0),
        (lambda m, x: x + 3, 0, 1),
        (lambda m, x: x - 3, 0, 1),
    ],
)
def test_functional_elementwise_ops(fn, mults, adds):
    report = score(Wrap(fn), (2, 3, 5))
    assert (report["mults"], report["adds"]) == (mults * 30, adds * 30)


def test_residual_add_every_form():
    for fn in (lambda m, x: m.body[0](x) + x, lambda m, x: torch.add(m.body[0](x), x)):
        report = score(Wrap(fn, nn.ReLU()), (4, 3, 3))
        (add,) = rows(report, "add")
        assert add["adds"] == 36 and add["mults"] == 0

    def inplace(m, x):
        y = m.body[0](x)
        y += x
        return y

    (add,) = rows(score(Wrap(inplace, nn.ReLU()), (4, 3, 3)), "add")
    assert add["adds"] == 36


def test_squeeze_excite_gate_is_a_scale_over_h_w_c():
    def se(m, x):
        s = x.mean((2, 3), keepdim=True)
        s = torch.sigmoid(m.body[0](s))
        return x * s

    report = score(Wrap(se, nn.Conv2d(8, 8, 1)), (8, 5, 5))
    (gap,) = rows(report, "gap")
    (scale,) = rows(report, "scale")
    assert gap["mults"] == 8 and gap["adds"] == 24 * 8
    assert scale["mults"] == 8 * 25 and scale["adds"] == 0
    (sig,) = rows(report, "sigmoid")
    assert sig["mults"] == 16 and sig["adds"] == 8


@pytest.mark.parametrize(
    "gap",
    [
        nn.AdaptiveAvgPool2d(1),
        Wrap(lambda m, x: x.mean((2, 3))),
        Wrap(lambda m, x: F.adaptive_avg_pool2d(x, 1)),
        Wrap(lambda m, x: torch.mean(x, dim=[2, 3])),
    ],
)
def test_global_average_pool(gap):
    report = score(nn.Sequential(gap), (5, 4, 6))
    assert report["mults"] == 5 and report["adds"] == (24 - 1) * 5


def test_pools():
    report = score(nn.Sequential(nn.MaxPool2d(2)), (3, 4, 4))
    assert report["mults"] == 0 and report["adds"] == 3 * 12
    report = score(nn.Sequential(nn.AvgPool2d(3, stride=1)), (3, 5, 5))
    assert report["mults"] == 27 and report["adds"] == 8 * 27
    report = score(Wrap(lambda m, x: F.max_pool2d(x, 3, 2, 1)), (2, 6, 6))
    assert report["adds"] == 8 * 2 * 3 * 3
    # adaptive pooling 5 -> 3: windows [0,2) [1,4) [3,5) of lengths 2, 3, 2 per dimension
    report = score(nn.Sequential(nn.AdaptiveAvgPool2d(3)), (2, 5, 5))
    assert report["mults"] == 18 and report["adds"] == 2 * (7 * 7 - 9)
    report = score(nn.Sequential(nn.AdaptiveAvgPool2d(7)), (2, 7, 7))  # VGG's pool on a 7x7 map
    assert report["ops"] == 0


def test_shape_ops_dropout_and_identity_are_free():
    def fn(m, x):
        y = m.body[0](x)
        y = torch.flatten(y, 1).view(1, -1).reshape(1, 2, -1)
        y = torch.cat([y, y[:, :1]], dim=1).permute(0, 2, 1).contiguous()
        return F.dropout(y, 0.5, training=False).unsqueeze(1).squeeze(1)

    report = score(Wrap(fn, nn.Sequential(nn.Identity(), nn.Dropout(0.2), nn.Flatten())), (4, 2, 2))
    assert report["layers"] == [] and report["ops"] == 0


def test_unknown_op_is_an_error_naming_it():
    with pytest.raises(BadInput, match="gelu"):
        score(Wrap(lambda m, x: F.gelu(x)), (2, 3, 3))
    with pytest.raises(BadInput, match="tanh"):
        score(nn.Sequential(nn.Conv2d(2, 2, 1), nn.Tanh()), (2, 3, 3))


def test_ops_on_weights_alone_are_folded_but_used_parameters_count():
    class LayerScale(nn.Module):
        def __init__(self):
            super().__init__()
            self.gamma = nn.Parameter(torch.full((4, 1, 1), 0.5))

        def forward(self, x):
            return x * (self.gamma * 2)  # gamma * 2 is a constant; x * (...) a scale

    report = score(LayerScale(), (4, 3, 3))
    assert report["mults"] == 36
    (tensor,) = rows(report, "tensor")
    assert tensor["name"] == "gamma" and tensor["params"] == 4


def test_shared_layer_counts_params_once_and_ops_twice():
    conv = nn.Conv2d(3, 3, 1, bias=False)
    report = score(Wrap(lambda m, x: m.body[0](m.body[0](x)), conv), (3, 2, 2))
    assert report["params"] == 9 and report["mults"] == 2 * 3 * 12


def test_functional_conv_in_a_custom_module_uses_its_spec_name():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 3, 3, 3))

        def forward(self, x):
            return F.conv2d(x, self.weight, None, 1, 1)

    model = nn.Sequential()
    model.add_module("block", Custom())
    report = score(model, (3, 4, 4))
    (conv,) = rows(report, "conv")
    assert conv["name"] == "block" and conv["mults"] == 27 * 64 and conv["params"] == 108


def test_meta_failure_falls_back_to_a_real_forward():
    class NeedsValues(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1, bias=False)
            self.register_buffer("enabled", torch.ones(()))

        def forward(self, x):
            if self.enabled.item() > 0:  # .item() has no meaning on the meta device
                x = self.conv(x)
            return x

    report = score(NeedsValues(), (2, 3, 3))
    assert report["mults"] == 2 * 18


def test_per_example_counts_and_rows_sum_to_totals():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )
    report = score(model, (3, 8, 8))
    for key in ("params", "mults", "adds"):
        assert sum(layer[key] for layer in report["layers"]) == pytest.approx(report[key], rel=1e-12)
    assert report["ops"] == report["mults"] + report["adds"]
    assert report["score"] == pytest.approx(report["params"] / 36.5e6 + report["ops"] / 10.49e9)


def test_parametrized_weight_is_counted_from_its_computed_value():
    from torch.nn.utils import parametrize

    class Mask(nn.Module):
        def __init__(self, mask):
            super().__init__()
            self.register_buffer("mask", mask)

        def forward(self, w):
            return w * self.mask

    model = nn.Sequential(nn.Conv2d(2, 4, 1, bias=False))
    mask = torch.ones(4, 2, 1, 1)
    mask[:2] = 0
    parametrize.register_parametrization(model[0], "weight", Mask(mask))
    (conv,) = rows(score(model, (2, 3, 3)), "conv")
    assert conv["sparsity"] == 0.5 and conv["mults"] == 4 * 9
