"""The routes of depthwise convs under CPU bf16 autocast (fp32 above 3x3, the bf16 input gradient for
strided 3x3): same values and gradients as the fp32 conv (to bf16 precision), each conv on its
route, weight parametrizations still applied, and the patch undone after use."""

import pytest
import torch
import torch.nn.utils.parametrize as parametrize

from mncli.engine import depthwise, forwards, runtime


def _grads(conv, x, autocast: bool):
    x = x.detach().clone().requires_grad_(True)
    conv.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = conv(x)
    out.float().pow(2).sum().backward()
    grads = [x.grad] + [p.grad for p in conv.parameters()]
    return out.float(), grads


@pytest.mark.parametrize(
    "size,stride,padding,kernel,bias",
    [
        (28, 2, 1, 3, False),
        (15, 2, 1, 3, True),
        (14, 2, 2, 5, False),
        (9, 3, 0, 3, False),
        (16, 2, 3, 7, False),
        (8, 2, 3, 3, False),  # padding > kernel - 1: the fp32 fallback
        (14, 1, 2, 5, True),
        (7, 1, 3, 7, False),
    ],
)
def test_matches_the_fp32_convolution(size, stride, padding, kernel, bias):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 8, kernel, stride, padding, groups=8, bias=bias)
    x = torch.randn(4, 8, size, size).contiguous(memory_format=torch.channels_last)
    want_out, want = _grads(conv, x, autocast=False)
    patched = depthwise.patch_depthwise(conv)
    assert patched == [conv]
    got_out, got = _grads(conv, x, autocast=True)
    forwards.restore_forward(patched)
    assert "forward" not in conv.__dict__
    assert got_out.shape == want_out.shape
    assert torch.allclose(got_out, want_out, rtol=0.02, atol=0.05)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype == torch.float32 and g.shape == w.shape
        assert (g - w).norm() / w.norm() < 0.02


def test_outside_autocast_the_original_forward_runs():
    conv = torch.nn.Conv2d(4, 4, 3, 2, 1, groups=4)
    x = torch.randn(2, 4, 8, 8)
    want = conv(x)
    depthwise.patch_depthwise(conv)
    assert torch.equal(conv(x), want)


def test_each_depthwise_conv_takes_its_route():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(4, 4, 3, 1, 1, groups=4),  # stride-1 3x3: autocast's bf16
        torch.nn.Conv2d(4, 8, 3, 2, 1),  # dense
        torch.nn.Conv2d(8, 8, 3, 2, 1, groups=8),  # strided 3x3: the bf16 input gradient
        torch.nn.Conv2d(8, 8, 3, 2, 1, groups=8, padding_mode="reflect"),
        torch.nn.Conv2d(8, 8, 5, 1, 2, groups=8),  # 5x5: fp32
        torch.nn.Conv2d(8, 8, 7, 2, 3, groups=8),  # strided 7x7: fp32
    )
    x = torch.randn(2, 8, 12, 12)
    assert depthwise.patch_depthwise(model) == [model[2], model[4], model[5]]
    for conv in model[4:]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = conv(x.to(torch.bfloat16))
        want = torch.nn.Conv2d.forward(conv, x.to(torch.bfloat16).float()).to(torch.bfloat16)
        assert got.dtype == torch.bfloat16 and torch.equal(got, want)


class _Halve(torch.nn.Module):
    def forward(self, w):
        return w * 0.5


@pytest.mark.parametrize("kernel", [3, 5], ids=["bf16-route", "fp32-route"])
def test_weight_parametrizations_still_apply(kernel):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 4, kernel, 2, kernel // 2, groups=4, bias=False)
    parametrize.register_parametrization(conv, "weight", _Halve())
    x = torch.randn(2, 4, 8, 8)
    want, want_grads = _grads(conv, x, autocast=False)
    depthwise.patch_depthwise(conv)
    got, got_grads = _grads(conv, x, autocast=True)
    assert torch.allclose(got, want, rtol=0.02, atol=0.02)
    assert (got_grads[1] - want_grads[1]).norm() / want_grads[1].norm() < 0.02


def test_the_allocator_setting_is_reported():
    rt = runtime.configure("cpu", "fp32")
    assert rt.describe()["allocator"] in ("tuned", "default")
