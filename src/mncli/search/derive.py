"""Deriving the network: argmax per block (zero -> identity), or the most probable one in the target band,
its counted cost, and its accuracy with the super-network's weights after re-estimating BN statistics."""

from __future__ import annotations

import torch
from torch import nn

from mncli.search.cost import CostModel, count, fit_to_target
from mncli.search.proxyless import log_probabilities
from mncli.search.supernet import SuperNet, derived_arch


def derive(supernet: SuperNet, costs: CostModel, target: float, fit: bool, low: float = 0.8) -> dict:
    """The derived architecture and what it is made of: per-block probabilities and choices, the
    expected cost under p, the argmax network's cost and the derived network's counted cost."""
    from mncli.models import build_model, input_shape

    argmax = supernet.chosen_indices()
    chosen = fit_to_target(log_probabilities(supernet), costs, argmax, target, low) if fit else argmax
    choices = [op.choices[j] for op, j in zip(supernet.mixed, chosen, strict=True)]
    arch = derived_arch(supernet.space, choices)
    with torch.device("meta"):
        model = build_model(arch)
    arch = model.arch
    counted = count(model, input_shape(arch), costs.metric, costs.task)
    with torch.no_grad():
        expected = float(costs.expected(supernet))
    blocks = []
    for b, (op, probs, j, a) in enumerate(
        zip(supernet.mixed, supernet.probabilities(), chosen, argmax, strict=True)
    ):
        blocks.append(
            {
                "block": b,
                "c_in": op.c_in,
                "c_out": op.c_out,
                "stride": op.stride,
                "probabilities": probs,
                "argmax": op.choices[a],
                "chosen": op.choices[j],
                "cost": costs.table[b][j],
            }
        )
    return {
        "arch": arch,
        "choices": choices,
        "indices": chosen,
        "blocks": blocks,
        "expected_cost": expected,
        "argmax_cost": costs.of_indices(argmax),
        "derived_cost": counted,
        "table_cost": costs.of_indices(chosen),
        "fitted_blocks": [b for b, (j, a) in enumerate(zip(chosen, argmax, strict=True)) if j != a],
    }


def set_path(supernet: SuperNet, indices: list[int]) -> None:
    for op, j in zip(supernet.mixed, indices, strict=True):
        op.active, op.involved, op.mode = j, [j], "path"


@torch.no_grad()
def reestimate_bn(supernet: SuperNet, batches, device: torch.device, steps: int = 50) -> None:
    """Recompute BN running statistics of the chosen path (cumulative average over `steps` batches)."""
    bns = [m for m in supernet.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    supernet.train()
    try:
        for i, (x, _) in enumerate(batches):
            if i >= steps:
                break
            supernet(x.to(device))
    finally:
        for bn, momentum in zip(bns, momenta, strict=True):
            bn.momentum = momentum
        supernet.eval()


@torch.no_grad()
def accuracy(
    supernet: SuperNet, split, device: torch.device, *, rank: int = 0, world_size: int = 1
) -> float | None:
    """Top-1 on `split`; under torchrun each rank counts its strided share and the counts are summed
    (every example counted once)."""
    supernet.eval()
    correct = total = 0
    batches = split if world_size <= 1 else split.batches(rank=rank, world_size=world_size)
    for x, y in batches:
        logits = supernet(x.to(device))
        correct += int((logits.argmax(1).cpu() == y.cpu()).sum())
        total += int(y.numel())
    if world_size > 1:
        counts = torch.tensor([correct, total], dtype=torch.int64, device=device)
        torch.distributed.all_reduce(counts)
        correct, total = (int(v) for v in counts.tolist())
    return correct / total if total else None


def shared_weight_accuracy(
    supernet: SuperNet, data, indices: list[int], device: torch.device, seed: int, *, rank: int = 0,
    world_size: int = 1,
) -> float | None:  # fmt: skip
    """Validation top-1 of the derived network with the super-network's weights (BN re-estimated).

    Under torchrun every rank re-estimates the statistics on the same global batches (world_size x
    the split's batch size: a single process's with that batch size), so they agree, then counts its
    share of val."""
    supernet.to(device)
    set_path(supernet, indices)
    size = data.train.batch_size * world_size if world_size > 1 else None
    reestimate_bn(supernet, data.train.batches(size, epoch=0, seed=seed, device=device), device)
    for op, j in zip(supernet.mixed, indices, strict=True):
        op.mode, op.active = "fixed", j
    try:
        return accuracy(supernet, data.val, device, rank=rank, world_size=world_size)
    finally:
        supernet.set_mode("argmax")
