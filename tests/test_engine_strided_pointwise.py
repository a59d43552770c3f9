"""Strided 1x1 convs on channels_last inputs computed on the subsampled input
(engine/strided_pointwise.py): the same outputs and gradients as the conv's own, only plain strided
1x1 convs without padding are patched, other inputs take the module's forward, fit routes them and
hands the model back, and one-thread channels_last training through them no longer aborts."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from conftest import RoutedAtTrainStart
from mncli.data import load_data
from mncli.engine import TrainConfig, fit, forwards, strided_pointwise
from mncli.models import create_model


def _grads(conv: nn.Conv2d, x: torch.Tensor):
    x = x.detach().clone().requires_grad_(True)
    conv.zero_grad()
    out = conv(x)
    out.pow(2).sum().backward()
    return out, [x.grad, conv.weight.grad, conv.bias.grad]


@pytest.mark.parametrize("size", [12, 13, 7])
@pytest.mark.parametrize("stride", [2, (2, 3)])
@pytest.mark.parametrize("groups", [1, 2])
def test_outputs_and_gradients_are_the_convs_own(size, stride, groups):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 1, stride=stride, groups=groups).to(memory_format=torch.channels_last)
    x = torch.randn(3, 4, size, size + 1).contiguous(memory_format=torch.channels_last)
    want_out, want = _grads(conv, x.contiguous())  # NCHW: the module's own kernels
    assert strided_pointwise.patch_strided_pointwise(conv) == [conv]
    got_out, got = _grads(conv, x)
    assert got_out.shape == want_out.shape and got_out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(got_out, want_out, atol=1e-6)
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, atol=1e-5), (g - w).abs().max()


def test_only_plain_strided_unpadded_one_by_one_convs_are_patched_and_restore_undoes_it():
    class OwnForward(nn.Conv2d):
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(
        nn.Conv2d(4, 4, 1, stride=2),
        nn.Conv2d(4, 4, 1),
        nn.Conv2d(4, 4, 3, stride=2),
        nn.Conv2d(4, 4, 1, stride=2, padding=1),
        OwnForward(4, 4, 1, stride=2),
    )
    patched = strided_pointwise.patch_strided_pointwise(model)
    assert patched == [model[0]] and strided_pointwise.patch_strided_pointwise(model) == []
    nchw = torch.randn(2, 4, 6, 6)  # not channels_last: the module's own forward, exactly
    assert torch.equal(model[0](nchw), nn.functional.conv2d(nchw, model[0].weight, model[0].bias, 2))
    forwards.restore_forward(patched)
    assert all("forward" not in m.__dict__ for m in model)


def test_fit_routes_them_under_channels_last_and_hands_the_model_back():
    data = load_data("synthetic:classes=4,shape=1x12x12,train=64,test=32", batch_size=32)
    torch.manual_seed(0)
    model = create_model("test-resnet", in_channels=1, input_size=12, num_classes=4, width=4)
    seen = RoutedAtTrainStart("layer2.0.shortcut.0")
    fit(model, data, TrainConfig(epochs=1, batch_size=32, precision="fp32", device="cpu"), [seen])
    assert seen.routed is True
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_one_thread_channels_last_training_of_a_strided_shortcut_does_not_abort():
    # On a Zen 3 EPYC (AVX2) PyTorch's own kernel aborted this process on every run (glibc heap checks);
    # through the engine it must finish. A subprocess, so an abort fails this test, not the worker.
    script = textwrap.dedent(
        """
        import torch
        from mncli.data import load_data
        from mncli.engine import TrainConfig, fit
        from mncli.models import create_model
        torch.set_num_threads(1)
        data = load_data("synthetic:classes=4,shape=1x12x12,train=64,test=32", batch_size=32)
        model = create_model("test-resnet", in_channels=1, input_size=12, num_classes=4, width=4)
        fit(model, data, TrainConfig(epochs=2, batch_size=32, precision="fp32", device="cpu"))
        print("finished")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, MNCLI_NUM_THREADS="1"),
    )
    assert done.returncode == 0 and "finished" in done.stdout, done.stderr[-2000:]
