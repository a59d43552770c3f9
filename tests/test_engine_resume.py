"""Checkpoint and resume: a run stopped by a signal mid-epoch and resumed ends with exactly the weights
of an uninterrupted run with the same seed."""

import os
import signal

import pytest
import torch

from mncli.data import Augment, load_data
from mncli.engine import Callback, TrainConfig, TrainingInterrupted, fit
from mncli.engine.checkpoint import load_checkpoint
from mncli.errors import BadInput
from mncli.models import create_model

SYN = "synthetic:classes=4,shape=1x8x8,train=400,test=50"


def setup(seed=0):
    torch.manual_seed(seed)
    model = create_model("test-cnn", num_classes=4, in_channels=1, input_size=8, width=4)
    data = load_data(SYN, batch_size=32, augment=Augment(crop=1, flip=True, cutout=2))
    return model, data


def config(precision):
    return TrainConfig(epochs=3, batch_size=32, lr=0.05, precision=precision, device="cpu", seed=7)


class SignalAt(Callback):
    def __init__(self, step, signum):
        self.step, self.signum = step, signum

    def after_step(self, ctx):
        if ctx.step == self.step:
            os.kill(os.getpid(), self.signum)


class Counter(Callback):
    """A callback with state that must survive the resume."""

    def __init__(self):
        self.seen = 0

    def after_step(self, ctx):
        self.seen += 1

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = state["seen"]


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, precision):
    model, data = setup()
    counter = Counter()
    reference = fit(model, data, config(precision), callbacks=[counter], ckpt_dir=tmp_path / "ref")
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    model, data = setup()
    with pytest.raises(TrainingInterrupted) as info:
        fit(
            model,
            data,
            config(precision),
            callbacks=[Counter(), SignalAt(16, signal.SIGINT)],
            ckpt_dir=tmp_path / "run",
        )
    assert info.value.exit_code == 130 and "resume" in info.value.hint
    assert "epoch 2 after batch 6" in info.value.message
    state = load_checkpoint(tmp_path / "run")
    assert (state["epoch"], state["batch"]) == (1, 6)

    model, data = setup(seed=123)  # different init: everything must come from the checkpoint
    resumed_counter = Counter()
    result = fit(
        model, data, config(precision), callbacks=[resumed_counter], ckpt_dir=tmp_path / "run", resume=True
    )
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert resumed_counter.seen == counter.seen
    assert [h["train_loss"] for h in result.history] == [h["train_loss"] for h in reference.history]
    assert result.best_epoch == reference.best_epoch


def test_sigterm_exit_code(tmp_path):
    model, data = setup()
    with pytest.raises(TrainingInterrupted) as info:
        fit(model, data, config("fp32"), callbacks=[SignalAt(2, signal.SIGTERM)], ckpt_dir=tmp_path / "c")
    assert info.value.exit_code == 143 and "SIGTERM" in info.value.message


def test_resume_refuses_other_settings_and_missing_checkpoint(tmp_path):
    model, data = setup()
    fit(model, data, config("fp32"), ckpt_dir=tmp_path / "c")
    other = config("fp32")
    other.lr = 0.1
    with pytest.raises(BadInput, match="other settings"):
        fit(model, data, other, ckpt_dir=tmp_path / "c", resume=True)
    with pytest.raises(BadInput, match="no checkpoint"):
        fit(model, data, config("fp32"), ckpt_dir=tmp_path / "none", resume=True)


def test_checkpoint_loads_with_weights_only(tmp_path):
    model, data = setup()
    fit(model, data, config("fp32"), ckpt_dir=tmp_path / "c")
    state = torch.load(tmp_path / "c" / "state.pt", weights_only=True)
    assert state["epoch"] == 3 and len(state["history"]) == 3
