"""The cost side of the search: the MicroNet count of every candidate, the expected cost under the
architecture probabilities, the cost-aware loss, and fitting the derived network to the target.

Each candidate block is counted once at its input shape by `mncli.scoring.score_model` (cached by
shape), so E[cost] = fixed + sum_blocks sum_j p_j * cost_j uses exactly the numbers `mncli score`
gives the derived network; the fixed part (stem, head, unsearched blocks) is the counted cost of one
derived network minus its blocks.
"""

from __future__ import annotations

import math

import torch

from mncli.errors import BadInput
from mncli.search.space import ZERO
from mncli.search.supernet import MixedOp, SuperNet, derived_arch, make_candidate

METRICS = ("ops", "params", "score")
# mul#log takes log(cost): the score (a fraction of the baseline) is taken in units of 1e-9 so its
# logarithm is positive and falls with the cost, like ops and params.
LOG_UNIT = {"ops": 1.0, "params": 1.0, "score": 1e9}


def count(module: torch.nn.Module, input_shape: tuple[int, int, int], metric: str, task: str) -> float:
    """The MicroNet cost of a module at an input shape (fp32, dense)."""
    from mncli.scoring import score_model

    was_training = module.training
    module.eval()
    try:
        report = score_model(module, {}, input_shape=tuple(input_shape), task=task)
    finally:
        module.train(was_training)
    return float(report[metric])


def count_candidate(choice: str, op: MixedOp, shape: tuple[int, int, int], metric: str, task: str) -> float:
    """A candidate block counted alone at its input shape, as the zoo builds it (dense, on meta)."""
    with torch.device("meta"):
        block = make_candidate(choice, op.c_in, op.c_out, op.stride, op.se_ratio, op.act)
    return count(block, shape, metric, task)


def block_input_shapes(supernet: SuperNet) -> list[tuple[int, int, int]]:
    """(C, H, W) at the input of every choice block, from a forward pass of the argmax network."""
    shapes: list[tuple[int, int, int]] = []
    hooks = [
        op.register_forward_pre_hook(lambda _m, args: shapes.append(tuple(args[0].shape[1:])))
        for op in supernet.mixed
    ]
    space = supernet.space
    was_training = supernet.training
    supernet.eval()
    try:
        with torch.no_grad():
            supernet(torch.zeros(1, space.in_channels, space.input_size, space.input_size))
    finally:
        for hook in hooks:
            hook.remove()
        supernet.train(was_training)
    return shapes


class CostModel:
    """Per-block candidate costs and the fixed cost of a super-network, in one metric."""

    def __init__(self, supernet: SuperNet, metric: str = "ops", task: str = "cifar100"):
        from mncli.models import build_model

        if metric not in METRICS:
            raise BadInput(f"unknown cost {metric!r}", hint="use --cost ops, params or score")
        self.metric, self.task, self.space = metric, task, supernet.space
        cache: dict[tuple, float] = {}
        self.table: list[list[float]] = []
        for op, shape in zip(supernet.mixed, block_input_shapes(supernet), strict=True):
            row = []
            for choice in op.choices:
                key = (choice, op.c_in, op.c_out, op.stride, shape)
                if key not in cache:
                    cache[key] = 0.0 if choice == ZERO else count_candidate(choice, op, shape, metric, task)
                row.append(cache[key])
            self.table.append(row)
        reference = [op.choices[0] for op in supernet.mixed]
        with torch.device("meta"):  # counted dense, shapes only
            reference_net = build_model(derived_arch(self.space, reference))
        total = count(reference_net, _input_shape(self.space), metric, task)
        self.fixed = total - sum(row[0] for row in self.table)

    def expected(self, supernet: SuperNet) -> torch.Tensor:
        """E[cost] = fixed + sum_b sum_j p_bj cost_bj, differentiable in every alpha."""
        terms = [
            torch.dot(op.probs(), torch.tensor(row, dtype=op.alpha.dtype, device=op.alpha.device))
            for op, row in zip(supernet.mixed, self.table, strict=True)
        ]
        return self.fixed + torch.stack(terms).sum()

    def of_indices(self, indices: list[int]) -> float:
        return self.fixed + sum(row[j] for row, j in zip(self.table, indices, strict=True))

    def minimum(self) -> float:
        return self.fixed + sum(min(row) for row in self.table)

    def maximum(self) -> float:
        return self.fixed + sum(max(row) for row in self.table)


def _input_shape(space) -> tuple[int, int, int]:
    return (space.in_channels, space.input_size, space.input_size)


def check_target(costs: CostModel, target: float) -> None:
    """An impossible target (below the cheapest network of the space) is the user's to fix."""
    if not (target > 0 and math.isfinite(target)):
        raise BadInput(f"the cost target must be a positive number, got {target}")
    cheapest = costs.minimum()
    if target < cheapest:
        raise BadInput(
            f"target {fmt(target, costs.metric)} {costs.metric} is below the cheapest network of this "
            f"search space ({fmt(cheapest, costs.metric)} {costs.metric}: every block at its cheapest op, "
            "plus stem and head)",
            hint="raise the target, or shrink the space "
            "(--widths, --repeats, --stem-channels, --head-channels)",
        )


def cost_loss(ce: torch.Tensor, expected: torch.Tensor, ref: float, kind: str, metric: str) -> torch.Tensor:
    """ProxylessNAS's cost-aware losses (ALGORITHMS.md):
    mul#log:    0.2 * CE * (log E[cost] / log ref) ** 0.3
    add#linear: CE + 0.1 * (E[cost] - ref) / ref"""
    if kind == "mul#log":
        unit = LOG_UNIT[metric]
        ratio = torch.log(expected * unit) / math.log(ref * unit)
        return 0.2 * ce * ratio.clamp_min(1e-6) ** 0.3
    if kind == "add#linear":
        return ce + 0.1 * (expected - ref) / ref
    raise BadInput(f"unknown cost loss {kind!r}", hint="use mul#log (default) or add#linear")


def fit_to_target(
    log_probs: list[list[float]],
    costs: CostModel,
    chosen: list[int],
    target: float,
    low: float = 0.8,
    resolution: int = 4000,
) -> list[int]:
    """The most probable network (largest sum of log-probabilities) whose cost lies in
    [low * target, target]; the most probable under the target when none reaches the band; `chosen`
    unchanged when it already lies in the band or nothing fits under the target.

    A multiple-choice knapsack by dynamic programming over the blocks, exact up to one step of the
    budget: the budget left after the fixed cost is cut into `resolution` steps, a candidate takes
    ceil(cost / step) of them, so every network kept is within the target; each step count keeps its
    most probable network."""
    total = costs.of_indices(chosen)
    if low * target <= total <= target:
        return list(chosen)
    budget = target - costs.fixed
    if budget < 0:
        return list(chosen)
    step = max(budget, 1e-30) / resolution
    best: dict[int, tuple[float, float, list[int]]] = {0: (0.0, costs.fixed, [])}
    for b, row in enumerate(costs.table):
        grown: dict[int, tuple[float, float, list[int]]] = {}
        for used, (logp, cost, path) in best.items():
            for j, c in enumerate(row):
                steps = used + math.ceil(c / step - 1e-9)
                if steps > resolution:
                    continue
                entry = (logp + log_probs[b][j], cost + c, path + [j])
                if steps not in grown or entry[0] > grown[steps][0]:
                    grown[steps] = entry
        best = grown
    if not best:
        return list(chosen)
    in_band = [e for e in best.values() if e[1] >= low * target]
    return max(in_band or best.values(), key=lambda e: e[0])[2]


def fmt(value: float, metric: str) -> str:
    if metric == "score":
        return f"{value:.6f}"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3f}{unit}"
    return f"{value:.0f}"
