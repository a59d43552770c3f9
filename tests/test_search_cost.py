"""The cost side of the search: candidate counts, expected cost, impossible targets, derivation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mncli.errors import BadInput
from mncli.search.cost import CostModel, check_target, cost_loss, fit_to_target
from mncli.search.space import SearchSpace, parse_op
from mncli.search.supernet import SuperNet, derived_arch, derived_blocks


def _space(**overrides) -> SearchSpace:
    args = dict(
        in_channels=1,
        input_size=12,
        num_classes=5,
        stem_channels=8,
        stem_stride=1,
        widths=[8, 16],
        repeats=[2, 2],
        strides=[2, 2],
        ops=["k3_e3", "k5_e6", "zero"],
        head_channels=32,
    )
    args.update(overrides)
    return SearchSpace(**args)


@pytest.fixture(scope="module")
def supernet() -> SuperNet:
    return SuperNet(_space(), seed=0)


@pytest.fixture(scope="module")
def fused_supernet() -> SuperNet:
    return SuperNet(_space(ops=["k3_e3", "fu_k3_e1", "fu_k5_e2", "zero"]), seed=0, shared=True)


@pytest.fixture(scope="module")
def se_supernet() -> SuperNet:
    return SuperNet(_space(ops=["k3_e3", "k5_e6", "fu_k3_e2", "zero"], se_ratio=0.25), seed=0, shared=True)


@pytest.fixture(scope="module")
def hswish_supernet() -> SuperNet:  # hard-swish costs 4 ops per element where relu6 costs 1
    return SuperNet(_space(act="hswish", stem_stride=2, se_ratio=0.25), seed=0, shared=True)


def _counted(arch: dict, metric: str) -> float:
    from mncli.models import build_model
    from mncli.scoring import score_model

    model = build_model(arch)
    return float(score_model(model, {}, input_shape=(1, 12, 12), task="cifar100")[metric])


@pytest.mark.parametrize("metric", ["ops", "params", "score"])
@pytest.mark.parametrize("net", ["supernet", "fused_supernet", "se_supernet", "hswish_supernet"])
def test_expected_cost_of_one_hot_probabilities_is_the_counted_cost_of_the_derived_net(net, metric, request):
    supernet = request.getfixturevalue(net)
    costs = CostModel(supernet, metric)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        picks = [int(torch.randint(len(op.choices), (1,), generator=generator)) for op in supernet.mixed]
        for op, j in zip(supernet.mixed, picks, strict=True):
            op.alpha = torch.full((len(op.choices),), -1e4).index_fill_(0, torch.tensor([j]), 0.0)
        choices = [op.choices[j] for op, j in zip(supernet.mixed, picks, strict=True)]
        expected = float(costs.expected(supernet))
        assert expected == pytest.approx(_counted(derived_arch(supernet.space, choices), metric), rel=1e-6)
        assert costs.of_indices(picks) == pytest.approx(expected, rel=1e-6)


def test_zero_is_offered_only_where_the_block_can_be_skipped():
    blocks = _space().blocks()
    assert [("zero" in b["choices"]) for b in blocks] == [False, True, False, True]
    assert blocks[0]["stride"] == 2 and blocks[2]["c_in"] == 8 and blocks[2]["c_out"] == 16


def test_unknown_candidate_op_is_bad_input():
    for bad in ("k4_e6", "conv3", "k3", "k3_e0", "fu_k2_e1", "fu_k3", "fk3_e1"):
        with pytest.raises(BadInput, match="unknown candidate op"):
            _space(ops=["k3_e3", bad])
    assert parse_op("K5_E6").kernel == 5
    fused = parse_op("fu_k3_e1")
    assert fused.fused and fused.name == "fu_k3_e1" and fused.block_type == "fu"


def test_impossible_target_names_the_minimum(supernet):
    costs = CostModel(supernet, "ops")
    cheapest = costs.minimum()
    all_cheapest = [min(range(len(row)), key=row.__getitem__) for row in costs.table]
    choices = [op.choices[j] for op, j in zip(supernet.mixed, all_cheapest, strict=True)]
    assert cheapest == pytest.approx(_counted(derived_arch(supernet.space, choices), "ops"))
    with pytest.raises(BadInput, match="below the cheapest network") as err:
        check_target(costs, cheapest * 0.9)
    assert f"{cheapest / 1e3:.3f}K" in err.value.message
    check_target(costs, cheapest)


def test_derived_blocks_drop_zero_and_merge_repeats():
    space = _space(widths=[8, 16], repeats=[3, 3])
    choices = ["k3_e3", "zero", "k3_e3", "k5_e6", "k5_e6", "zero"]
    assert derived_blocks(space, choices) == ["ir_r2_k3_s2_e3_c8", "ir_r2_k5_s2_e6_c16"]
    space = _space(widths=[8, 16], repeats=[3, 3], ops=["k3_e3", "fu_k3_e3", "zero"])
    choices = ["fu_k3_e3", "k3_e3", "k3_e3", "fu_k3_e3", "fu_k3_e3", "k3_e3"]
    assert derived_blocks(space, choices) == [
        "fu_r1_k3_s2_e3_c8",
        "ir_r2_k3_s1_e3_c8",
        "fu_r2_k3_s2_e3_c16",
        "ir_r1_k3_s1_e3_c16",
    ]


def test_squeeze_excite_reaches_every_derived_block():
    space = _space(ops=["k3_e3", "fu_k3_e1", "zero"], se_ratio=0.25)
    assert derived_blocks(space, ["fu_k3_e1", "k3_e3", "k3_e3", "zero"]) == [
        "fu_r1_k3_s2_e1_c8_se0.25",
        "ir_r1_k3_s1_e3_c8_se0.25",
        "ir_r1_k3_s2_e3_c16_se0.25",
    ]
    with pytest.raises(BadInput, match="se-ratio"):
        _space(se_ratio=1.5)


def test_activation_reaches_the_derived_net_and_unknown_ones_are_bad_input():
    space = _space(act="HSwish")
    assert derived_arch(space, ["k3_e3", "zero", "k5_e6", "k3_e3"])["args"]["act"] == "hswish"
    with pytest.raises(BadInput, match="unknown activation 'gelu'"):
        _space(act="gelu")


def test_fit_to_target_lands_in_the_band(supernet):
    costs = CostModel(supernet, "ops")
    low, high = costs.minimum(), costs.maximum()
    log_probs = [[math.log(1 / len(row))] * len(row) for row in costs.table]
    most = [max(range(len(row)), key=row.__getitem__) for row in costs.table]
    least = [min(range(len(row)), key=row.__getitem__) for row in costs.table]
    for target in (low * 1.3, math.sqrt(low * high), high * 0.8):
        down = costs.of_indices(fit_to_target(log_probs, costs, most, target, low=0.8))
        up = costs.of_indices(fit_to_target(log_probs, costs, least, target, low=0.8))
        for cost in (down, up):
            assert 0.8 * target <= cost <= target
    # a block the search is sure of keeps its op; the undecided ones move
    log_probs[0] = [-20.0, 0.0]  # block 0 (k3_e3 | k5_e6): k5_e6
    reachable = costs.of_indices([1] + least[1:]) * 1.05
    chosen = fit_to_target(log_probs, costs, most, reachable, low=0.8)
    assert chosen[0] == 1 and costs.of_indices(chosen) <= reachable


@pytest.mark.parametrize("band", [0.8, 0.995])  # 0.995: often no network lies in the band
def test_fit_to_target_is_the_most_probable_network_in_the_band(supernet, band):
    """Against brute force over every network of the space, for random probabilities and targets."""
    costs = CostModel(supernet, "ops")
    networks = list(itertools.product(*[range(len(row)) for row in costs.table]))
    generator = torch.Generator().manual_seed(3)
    low, high = costs.minimum(), costs.maximum()
    seen = set()

    def logp(net, log_probs):
        return sum(lp[j] for lp, j in zip(log_probs, net, strict=True))

    for _ in range(20):
        log_probs = [torch.randn(len(r), generator=generator).log_softmax(0).tolist() for r in costs.table]
        target = low + float(torch.rand(1, generator=generator)) * (high - low)
        argmax = [max(range(len(lp)), key=lp.__getitem__) for lp in log_probs]
        chosen = fit_to_target(log_probs, costs, argmax, target, low=band)
        in_band = [n for n in networks if band * target <= costs.of_indices(n) <= target]
        if band * target <= costs.of_indices(argmax) <= target:
            assert chosen == argmax
            seen.add("argmax")
        elif in_band:
            assert band * target <= costs.of_indices(chosen) <= target
            assert logp(chosen, log_probs) == pytest.approx(max(logp(n, log_probs) for n in in_band))
            seen.add("band")
        else:
            under = [n for n in networks if costs.of_indices(n) <= target]
            assert logp(chosen, log_probs) == pytest.approx(max(logp(n, log_probs) for n in under))
            seen.add("under")
    assert seen >= ({"band"} if band == 0.8 else {"under"})


def test_cost_losses():
    ce = torch.tensor(2.0)
    expected = torch.tensor(8e6, requires_grad=True)
    loss = cost_loss(ce, expected, 4e6, "mul#log", "ops")
    assert loss.item() == pytest.approx(0.2 * 2.0 * (math.log(8e6) / math.log(4e6)) ** 0.3)
    loss.backward()
    assert expected.grad > 0  # more cost, more loss
    linear = cost_loss(ce, torch.tensor(5e6), 4e6, "add#linear", "ops")
    assert float(linear) == pytest.approx(2.0 + 0.1 * 0.25)
    score = torch.tensor(2e-4, requires_grad=True)
    cost_loss(ce, score, 1e-4, "mul#log", "score").backward()
    assert score.grad > 0
    with pytest.raises(BadInput):
        cost_loss(ce, expected, 4e6, "mul#exp", "ops")
