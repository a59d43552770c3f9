"""Global average pools whose input gradient keeps the input's layout (engine/pooling.py): the forward
is the module's own, the gradients are autograd's, a channels_last input gets a channels_last
gradient, only 1 x 1 adaptive pools are patched, and fit routes them on the CPU and hands the model
back."""

import pytest
import torch
from torch import nn

from conftest import RoutedAtTrainStart
from mncli.data import load_data
from mncli.engine import TrainConfig, fit, forwards, pooling
from mncli.models import create_model

FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )


def _outputs_and_grads(model: nn.Module, x: torch.Tensor, dtype: torch.dtype):
    x = x.detach().clone().requires_grad_(True)
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is torch.bfloat16):
        out = model(x)
    out.float().pow(2).sum().backward()
    return out, [x.grad] + [p.grad for p in model.parameters()]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16-autocast"])
def test_outputs_and_gradients_are_autograds(fmt, dtype):
    x = torch.randn(4, 3, 7, 7).contiguous(memory_format=FORMATS[fmt])
    model = _net().to(memory_format=FORMATS[fmt])
    want_out, want = _outputs_and_grads(model, x, dtype)
    assert pooling.patch_global_pools(model) == [model[3]]
    got_out, got = _outputs_and_grads(model, x, dtype)
    assert torch.equal(got_out, want_out)
    # in bf16 the layer below sums its gradient in another order, so equal to bf16's precision
    tolerance = 1e-5 if dtype is torch.float32 else 2e-2
    for g, w in zip(got, want, strict=True):
        assert (g - w).norm() <= tolerance * w.norm(), (g - w).abs().max()


def test_a_channels_last_input_gets_a_channels_last_gradient():
    x = torch.randn(2, 6, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    pool = nn.AdaptiveAvgPool2d((1, 1))
    grad_out = torch.randn(2, 6, 1, 1)
    (want,) = torch.autograd.grad(pool(x), x, grad_out)
    assert not want.is_contiguous(memory_format=torch.channels_last)  # autograd's own: NCHW
    pooling.patch_global_pools(pool)
    (got,) = torch.autograd.grad(pool(x), x, grad_out)
    assert got.is_contiguous(memory_format=torch.channels_last) and torch.equal(got, want)


def test_only_one_by_one_adaptive_pools_are_patched_and_restore_undoes_it():
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.AdaptiveAvgPool2d((1, 1)), nn.AdaptiveAvgPool2d(2))
    patched = pooling.patch_global_pools(model)
    assert patched == [model[0], model[1]] and pooling.patch_global_pools(model) == []
    unbatched = torch.randn(3, 4, 4)
    assert torch.equal(model[0](unbatched), nn.functional.adaptive_avg_pool2d(unbatched, 1))
    forwards.restore_forward(patched)
    assert all("forward" not in m.__dict__ for m in model)


def test_fit_routes_the_pool_on_the_cpu_and_hands_the_model_back():
    data = load_data("synthetic:classes=4,shape=1x8x8,train=64,test=32", batch_size=32)
    torch.manual_seed(0)
    model = create_model("test-cnn", num_classes=4, in_channels=1, input_size=8, width=4)
    seen = RoutedAtTrainStart("pool")
    fit(model, data, TrainConfig(epochs=1, batch_size=32, precision="fp32", device="cpu"), [seen])
    assert seen.routed is True and "forward" not in model.pool.__dict__
