"""Masks hit their target exactly, keep earlier zeros, and stay applied through optimiser steps."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mncli.compress.prune.agp import AGPSchedule
from mncli.compress.prune.callbacks import MaskCallback, ReweightedL1Callback
from mncli.compress.prune.masks import Masker, global_magnitude_masks, magnitude_mask, target_count
from mncli.compress.prune.reweighted_l1 import ReweightedL1, default_milestones
from mncli.errors import BadInput


@settings(max_examples=40, deadline=None)
@given(
    numel=st.integers(1, 300),
    sparsity=st.floats(0.0, 0.999),
    distinct=st.integers(1, 5),
    seed=st.integers(0, 1000),
)
def test_mask_zeroes_exactly_k_weights_even_with_ties(numel, sparsity, distinct, seed):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randint(-distinct, distinct + 1, (numel,), generator=gen).float()  # many ties
    keep = magnitude_mask(weight, sparsity)
    k = target_count(sparsity, numel)
    assert int((~keep).sum()) == k
    if 0 < k < numel:  # every pruned |w| is <= every kept |w|
        assert weight[~keep].abs().max() <= weight[keep].abs().min()


def test_mask_is_deterministic_and_breaks_ties_by_position():
    weight = torch.ones(10)
    keep = magnitude_mask(weight, 0.3)
    assert keep.tolist() == [False] * 3 + [True] * 7
    assert torch.equal(keep, magnitude_mask(weight, 0.3))


def test_forced_zeros_stay_and_count_towards_the_target():
    weight = torch.arange(1.0, 11.0)
    forced = torch.zeros(10, dtype=torch.bool)
    forced[[8, 9]] = True  # the two largest must stay zero
    keep = magnitude_mask(weight, 0.5, forced)
    assert int((~keep).sum()) == 5
    assert not keep[8] and not keep[9]
    assert (~keep[:3]).all()  # then the three smallest
    low = magnitude_mask(weight, 0.1, forced)  # a target below the existing sparsity keeps them all
    assert int((~low).sum()) == 2 and not low[8] and not low[9]


def test_global_threshold_reaches_overall_target_across_layers():
    weights = {"a": torch.arange(1.0, 101.0), "b": torch.arange(1.0, 11.0) * 100}
    masks = global_magnitude_masks(weights, 0.5)
    assert sum(int((~m).sum()) for m in masks.values()) == 55
    assert int((~masks["b"]).sum()) == 0  # all of "b" is larger than "a"


def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def test_masker_survives_momentum_and_weight_decay():
    model = _tiny()
    masker = Masker(model, ["0", "2"])
    masker.prune_to({"0": 0.75, "2": 0.5})
    callback = MaskCallback(masker)
    callback.on_train_start(None)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    for _ in range(5):
        callback.before_step(None)
        loss = model(torch.randn(4, 8)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        assert (model[0].weight.grad[~masker.masks["0"]] == 0).all()  # gradients masked too
        opt.step()
        callback.after_step(None)
    assert int((model[0].weight == 0).sum()) == target_count(0.75, 128)
    assert int((model[2].weight == 0).sum()) == target_count(0.5, 64)
    assert masker.max_deviation() == 0
    callback.close()


def test_fixed_zeros_of_an_earlier_stage_are_kept():
    model = _tiny()
    with torch.no_grad():
        model[0].weight[:, :2] = 0  # 32 zeros from "the input artifact", wherever magnitudes say
    fixed = {"0": model[0].weight == 0}
    masker = Masker(model, ["0"], fixed=fixed)
    masker.prune_to({"0": 0.5})
    assert (model[0].weight[:, :2] == 0).all()
    assert int((model[0].weight == 0).sum()) == 64


class _Ctx:
    def __init__(self, epoch=0, step=0):
        self.epoch, self.step = epoch, step


def test_agp_callback_follows_the_cubic_schedule_per_epoch():
    model = _tiny()
    schedule = AGPSchedule(final=0.8, initial=0.05, start=0, end=6, freq=2)
    masker = Masker(model, ["0", "2"])
    logs = []
    cb = MaskCallback(masker, schedule=schedule, finals={"0": 0.8, "2": 0.5}, log=logs.append)
    cb.on_train_start(_Ctx())
    for epoch in range(8):
        for step in range(2):
            cb.before_step(_Ctx(epoch, epoch * 2 + step))
            cb.after_step(_Ctx(epoch, epoch * 2 + step))
        metrics = {}
        cb.on_epoch_end(_Ctx(epoch), metrics)
        expected = target_count(schedule.target(epoch, 0.8), 128)
        assert int((model[0].weight == 0).sum()) == expected
        assert int((model[2].weight == 0).sum()) == target_count(schedule.target(epoch, 0.5), 64)
        assert metrics["sparsity"] == pytest.approx(metrics["sparsity_target"], abs=1 / 192)
    assert int((model[0].weight == 0).sum()) == target_count(0.8, 128)
    assert len(logs) == 8 and "target" in logs[0]
    state = cb.state_dict()
    fresh = MaskCallback(Masker(model, ["0", "2"]), schedule=schedule, finals={"0": 0.8})
    fresh.load_state_dict(state)
    assert fresh.last_pruned == 4 and torch.equal(fresh.masker.masks["0"], masker.masks["0"])


def test_agp_schedule_formula_and_validation():
    s = AGPSchedule(final=0.7, initial=0.05, start=0, end=20, freq=2)
    assert s.span == 18
    assert s.steps() == list(range(0, 20, 2))
    assert s.target(0) == pytest.approx(0.05)
    assert s.target(18) == pytest.approx(0.7)
    assert s.target(25) == pytest.approx(0.7)
    assert s.target(3) == pytest.approx(s.target(2))  # holds between steps
    assert s.target(6) == pytest.approx(0.7 + (0.05 - 0.7) * (1 - 6 / 18) ** 3)
    assert AGPSchedule(final=0.5, start=3, end=4, freq=2).target(3) == pytest.approx(0.5)  # span 0
    assert s.target(4, final=0.03) <= 0.03  # a layer whose final is below s_i never overshoots
    for bad in ({"final": 1.0}, {"final": -0.1}, {"final": 0.5, "end": 0}, {"final": 0.5, "freq": 0},
                {"final": 0.5, "unit": "hours"}):  # fmt: skip
        with pytest.raises(BadInput):
            AGPSchedule(**{"end": 5, **bad})


def test_agp_in_steps_unit_prunes_on_global_steps():
    model = _tiny()
    schedule = AGPSchedule(final=0.6, initial=0.1, start=2, end=9, freq=3, unit="steps")
    masker = Masker(model, ["0"])
    cb = MaskCallback(masker, schedule=schedule, finals={"0": 0.6})
    cb.on_train_start(_Ctx())
    seen = []
    for step in range(12):
        cb.before_step(_Ctx(0, step))
        seen.append(int((model[0].weight == 0).sum()))
        cb.after_step(_Ctx(0, step))
    assert seen[:2] == [0, 0]
    assert seen[2] == target_count(0.1, 128)
    assert seen[-1] == target_count(0.6, 128)


def test_reweighted_l1_penalty_uses_absolute_weights():
    model = _tiny()
    reg = ReweightedL1(model, ["0"], lam=1.0, eps=1e-3)
    w = model[0].weight.detach()
    expected = (w.abs() / (w.abs() + 1e-3)).sum()
    assert float(reg.penalty().detach()) == pytest.approx(float(expected), rel=1e-5)
    assert float(reg.penalty().detach()) > 0  # with 1/(W + eps) negative weights would give negative terms
    with torch.no_grad():
        model[0].weight.mul_(0.5)
    before = float(reg.penalty().detach())
    cb = ReweightedL1Callback(reg, milestones=[1])
    cb.on_epoch_end(_Ctx(0), {})
    assert reg.rounds == 2 and float(reg.penalty().detach()) != pytest.approx(before)
    assert default_milestones(300) == [60, 120, 180, 240]
    assert default_milestones(3) == [1, 2]
