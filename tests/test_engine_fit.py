"""The training loop: it learns, calls the hooks in order, excludes the right parameters from weight
decay, follows the schedules, distils with T^2, and stops on a NaN with the step."""

import math

import pytest
import torch
import torch.nn.functional as F

from mncli.data import load_data
from mncli.engine import Callback, TrainConfig, evaluate, fit
from mncli.engine.losses import distillation_loss
from mncli.engine.optim import lr_factor, param_groups
from mncli.errors import BadInput, RuntimeFailure
from mncli.models import create_model

SYN = "synthetic:classes=4,shape=1x8x8,train=480,test=120"


def tiny(seed=0):
    torch.manual_seed(seed)
    return create_model("test-cnn", num_classes=4, in_channels=1, input_size=8, width=4)


def cfg(**kw):
    base = dict(epochs=2, batch_size=32, lr=0.05, precision="fp32", device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def test_fit_learns_and_keeps_the_best():
    data = load_data(SYN, batch_size=32)
    model = tiny()
    before = evaluate(model, data.val)["top1"]
    result = fit(model, data, cfg(epochs=4, lr=0.1))
    assert len(result.history) == 4 and result.best_state is not None
    assert result.best_val_acc == max(h["val_acc"] for h in result.history)
    assert result.best_val_acc > max(before, 0.5)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.runtime["device"] == "cpu" and result.runtime["precision"] == "fp32"


def test_bf16_autocast_trains_when_the_cpu_supports_it():
    from mncli.engine.runtime import cpu_has_bf16

    if not cpu_has_bf16():
        pytest.skip("no native bf16 on this CPU")
    data = load_data(SYN, batch_size=32)
    result = fit(tiny(), data, cfg(epochs=3, lr=0.1, precision="auto"))
    assert result.runtime["precision"] == "bf16" and result.runtime["channels_last"]
    assert result.best_val_acc > 0.5


class Recorder(Callback):
    def __init__(self):
        self.events = []
        self.extra_param = torch.nn.Parameter(torch.tensor(1.0))

    def on_train_start(self, ctx):
        self.events.append("start")
        assert ctx.optimizer is not None and ctx.data is not None and ctx.device.type == "cpu"

    def param_groups(self, model):
        return [{"params": [self.extra_param], "lr": 0.5}]

    def before_step(self, ctx):
        self.events.append(("before", ctx.epoch, ctx.batch_index, ctx.step))
        assert ctx.x is not None and ctx.x.shape[0] == 32

    def extra_loss(self, ctx, logits, y):
        return (self.extra_param - 3.0) ** 2

    def after_backward(self, ctx):
        assert self.extra_param.grad is not None
        self.events.append("backward")

    def after_step(self, ctx):
        self.events.append("after")

    def on_epoch_end(self, ctx, metrics):
        metrics["custom"] = 1.0
        self.events.append("epoch")

    def on_train_end(self, ctx):
        self.events.append("end")


def test_callback_hooks_order_extra_loss_and_own_group():
    data = load_data(SYN, batch_size=32)
    recorder = Recorder()
    result = fit(
        tiny(), data, cfg(epochs=1, max_steps_per_epoch=3, schedule="constant"), callbacks=[recorder]
    )
    assert recorder.events[0] == "start" and recorder.events[-1] == "end"
    assert recorder.events[1:4] == [("before", 0, 0, 0), "backward", "after"]
    assert recorder.events.count("epoch") == 1 and result.history[0]["custom"] == 1.0
    # its own group at lr 0.5 pulled the extra parameter towards 3 with the extra loss
    assert abs(recorder.extra_param.item() - 3.0) < 2.0


def test_weight_decay_groups():
    class WithScale(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3)
            self.bn = torch.nn.BatchNorm2d(2)
            self.q = torch.nn.Module()
            self.q.scale = torch.nn.Parameter(torch.ones(2, 1, 1, 1))
            self.wp = torch.nn.Parameter(torch.ones(3, 3))

    model = WithScale()
    groups = {g["name"]: g for g in param_groups(model, cfg(weight_decay=0.1), [])}
    decay = {id(p) for p in groups["decay"]["params"]}
    assert decay == {id(model.conv.weight), id(model.wp)}
    assert groups["decay"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0.0
    no_decay = {id(p) for p in groups["no_decay"]["params"]}
    assert {id(model.conv.bias), id(model.bn.weight), id(model.bn.bias), id(model.q.scale)} <= no_decay


def test_schedules():
    c = cfg(epochs=10, schedule="cosine", warmup_epochs=1)
    assert lr_factor(c, 0, 10) == pytest.approx(0.1)
    assert lr_factor(c, 9, 10) == pytest.approx(1.0)
    assert lr_factor(c, 55, 10) == pytest.approx(0.5, abs=0.02)
    assert lr_factor(c, 99, 10) < 0.01
    s = cfg(epochs=10, schedule="step", milestones=(5, 8), gamma=0.1)
    assert [lr_factor(s, e * 10, 10) for e in (0, 5, 8)] == pytest.approx([1.0, 0.1, 0.01])
    o = cfg(epochs=10, schedule="onecycle")
    peak = max(lr_factor(o, i, 10) for i in range(100))
    assert lr_factor(o, 0, 10) == pytest.approx(0.04) and peak == pytest.approx(1.0, abs=1e-3)
    assert lr_factor(o, 99, 10) < 1e-3
    assert lr_factor(cfg(schedule="constant"), 7, 10) == 1.0


def test_distillation_loss_formula():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    T = 4.0
    kl = (F.softmax(t / T, 1) * (F.log_softmax(t / T, 1) - F.log_softmax(s / T, 1))).sum(1).mean()
    expected = 0.3 * F.cross_entropy(s, y) + 0.7 * T * T * kl
    got = distillation_loss(s, t, y, temperature=T, student_weight=0.3, distill_weight=0.7)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    same = distillation_loss(s, s, y, temperature=T, student_weight=0.0, distill_weight=1.0)
    assert same.item() == pytest.approx(0.0, abs=1e-6)


def test_fit_with_teacher_runs():
    data = load_data(SYN, batch_size=32)
    teacher = tiny(1)
    fit(teacher, data, cfg(epochs=1))
    result = fit(tiny(2), data, cfg(epochs=1), teacher=teacher)
    assert math.isfinite(result.history[0]["train_loss"])
    assert not any(p.requires_grad for p in teacher.parameters())


def test_nan_loss_stops_with_the_step():
    class Poison(Callback):
        def extra_loss(self, ctx, logits, y):
            return torch.tensor(float("nan")) if ctx.step == 2 else None

    data = load_data(SYN, batch_size=32)
    with pytest.raises(RuntimeFailure, match=r"batch 3 \(step 3\)"):
        fit(tiny(), data, cfg(), callbacks=[Poison()])


@pytest.mark.parametrize(
    "bad", [dict(lr=-0.1), dict(lr=0.0), dict(epochs=-1), dict(batch_size=0), dict(optimizer="lion"),
            dict(schedule="poly"), dict(weight_decay=-1.0), dict(label_smoothing=1.0)],
)  # fmt: skip
def test_bad_config_is_bad_input(bad):
    with pytest.raises(BadInput):
        cfg(**bad).validate()


def test_optimizers_and_label_smoothing_and_clip_run():
    data = load_data(SYN, batch_size=32)
    for name in ("adam", "adamw"):
        result = fit(tiny(), data, cfg(epochs=1, optimizer=name, lr=1e-3, label_smoothing=0.1, grad_clip=1.0))
        assert math.isfinite(result.history[0]["train_loss"])
