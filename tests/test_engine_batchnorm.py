"""Narrow batch norms computed in NCHW under channels_last training (engine/batchnorm.py): outputs,
gradients and running statistics are the module's own, every gradient comes back in its tensor's
layout, only narrow BatchNorm2d layers in training mode on channels_last inputs take the route, and
fit installs it on the CPU and hands the model back."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mncli.data import load_data
from mncli.engine import Callback, TrainConfig, batchnorm, fit, forwards
from mncli.models import create_model

CL = torch.channels_last
DTYPES = (torch.float32, torch.bfloat16)


def _bn(channels: int, momentum: float | None = 0.1) -> nn.BatchNorm2d:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(channels, momentum=momentum)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1.0, 1.0)
    return bn


def _run(bn: nn.BatchNorm2d, x: torch.Tensor, grad_out: torch.Tensor, autocast: bool = False):
    x = x.detach().clone().requires_grad_(True)
    bn.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = bn(x)
    out.backward(grad_out.to(out.dtype))
    state = [bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()]
    return out, [x.grad, bn.weight.grad, bn.bias.grad], state, x.grad


def _close(got: torch.Tensor, want: torch.Tensor, tolerance: float) -> bool:
    return bool((got.float() - want.float()).norm() <= tolerance * want.float().norm() + 1e-12)


@settings(max_examples=20, deadline=None)
@given(
    channels=st.sampled_from([1, 3, 8, 12, 24, 31]),
    batch=st.integers(1, 6),
    size=st.integers(2, 9),
    momentum=st.sampled_from([0.1, 0.01, None]),
    offset=st.floats(-50, 50),
)
def test_outputs_gradients_and_running_statistics_are_the_modules_own(
    channels, batch, size, momentum, offset
):
    x = (torch.randn(batch, channels, size, size) * 3 + offset).contiguous(memory_format=CL)
    grad_out = torch.randn(x.shape).contiguous(memory_format=CL)
    plain, routed = _bn(channels, momentum), _bn(channels, momentum)
    assert batchnorm.patch_narrow_batchnorms(routed) == [routed]
    for _ in range(2):  # the second step starts from the running averages the first left
        want_out, want_grads, want_state, _ = _run(plain, x, grad_out)
        got_out, got_grads, got_state, grad_x = _run(routed, x, grad_out)
        assert got_out.is_contiguous(memory_format=CL) and grad_x.is_contiguous(memory_format=CL)
        assert _close(got_out, want_out, 1e-5)
        for got, want in zip(got_grads + got_state, want_grads + want_state, strict=True):
            assert _close(got, want, 1e-4), (got, want)


def test_under_bf16_autocast_it_matches_to_bf16_precision():
    x = torch.randn(8, 24, 14, 14).to(torch.bfloat16).contiguous(memory_format=CL)
    grad_out = torch.randn(x.shape).contiguous(memory_format=CL)
    want_out, want_grads, want_state, _ = _run(_bn(24), x, grad_out, autocast=True)
    routed = _bn(24)
    batchnorm.patch_narrow_batchnorms(routed)
    got_out, got_grads, got_state, grad_x = _run(routed, x, grad_out, autocast=True)
    assert got_out.dtype is want_out.dtype is torch.bfloat16 and grad_x.is_contiguous(memory_format=CL)
    assert _close(got_out, want_out, 1e-2)
    for got, want in zip(got_grads + got_state, want_grads + want_state, strict=True):
        assert _close(got, want, 2e-2)


@pytest.mark.parametrize(
    "case",
    ["eval mode", "nchw input", "1x1 pixels"],
)
def test_other_calls_are_the_modules_own_forward_exactly(case):
    shape = (4, 8, 1, 1) if case == "1x1 pixels" else (4, 8, 5, 5)
    x = torch.randn(shape)
    if case != "nchw input":
        x = x.contiguous(memory_format=CL)
    plain, routed = _bn(8), _bn(8)
    batchnorm.patch_narrow_batchnorms(routed)
    for module in (plain, routed):
        module.train(case != "eval mode")
    want = plain(x)
    got = routed(x)
    assert torch.equal(got, want) and got.stride() == want.stride()


def test_only_narrow_batchnorm2d_layers_are_patched_and_restore_undoes_it():
    model = nn.Sequential(*(nn.BatchNorm2d(c) for c in (8, 12, 16, 24, 32, 40, 64)), nn.BatchNorm1d(8))
    model[1].forward = model[1].forward  # already replaced by someone else (e.g. synchronised BN)
    patched = batchnorm.patch_narrow_batchnorms(model)
    assert patched == [model[0], model[3], model[5]] and batchnorm.patch_narrow_batchnorms(model) == []
    wide = {dtype: [c for c in range(1, 65) if not batchnorm.is_narrow(c, dtype)] for dtype in DTYPES}
    assert wide == {torch.float32: [16, *range(32, 65)], torch.bfloat16: [16, 32, *range(48, 65)]}
    forwards.restore_forward(patched)
    assert all("forward" not in m.__dict__ for m in patched)


def test_a_width_routed_only_in_bf16_takes_the_route_only_for_bf16_inputs(monkeypatch):
    relayouts = []
    apply = batchnorm._Relayout.apply
    monkeypatch.setattr(batchnorm._Relayout, "apply", lambda *a: relayouts.append(a[1]) or apply(*a))
    x = torch.randn(4, 40, 3, 3).contiguous(memory_format=CL)
    bn = _bn(40)
    batchnorm.patch_narrow_batchnorms(bn)
    bn(x)
    assert relayouts == []
    assert bn(x.bfloat16()).is_contiguous(memory_format=CL)
    assert relayouts == [torch.contiguous_format, CL]


class _SeesTheRoute(Callback):
    def __init__(self):
        self.routed = None

    def on_train_start(self, ctx):
        self.routed = ["forward" in bn.__dict__ for bn in (ctx.model.bn1, ctx.model.bn2, ctx.model.bn3)]


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "nchw"])
def test_fit_routes_narrow_batchnorms_under_channels_last_and_hands_the_model_back(channels_last):
    data = load_data("synthetic:classes=4,shape=1x8x8,train=64,test=32", batch_size=32)
    torch.manual_seed(0)
    model = create_model("test-cnn", num_classes=4, in_channels=1, input_size=8, width=4)  # BN 4, 8, 16
    seen = _SeesTheRoute()
    cfg = TrainConfig(epochs=1, batch_size=32, precision="fp32", device="cpu", channels_last=channels_last)
    fit(model, data, cfg, [seen])
    assert seen.routed == ([True, True, False] if channels_last else [False] * 3)
    assert all("forward" not in m.__dict__ for m in model.modules())
