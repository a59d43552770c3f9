"""Top-1 / top-5 accuracy and mean loss of a model on a split; under torchrun, sharded over the ranks.

With `sharded=True` (or an explicit rank / world_size) each rank evaluates its strided share of the
split (examples rank, rank + world, ...: no padding, so every example is counted exactly once) and
the sums are all-reduced on the rank's device: every rank gets the metrics of the whole split, equal
to one process's up to the order of float64 additions. Every rank must then call it.
"""

from __future__ import annotations

import torch

from mncli.engine import distributed


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    split,
    device: torch.device | str = "cpu",
    *,
    batch_size: int | None = None,
    channels_last: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    sharded: bool = False,
) -> dict:
    """{"top1", "top5", "loss", "count"} in fp32 (the deployed arithmetic), model left as it was.

    `sharded`: rank and world size from the initialised process group (one process: the whole
    split). Without it and without rank / world_size, this process evaluates the whole split alone."""
    device = torch.device(device)
    if sharded and rank is None and world_size is None:
        rank, world_size = distributed.group_shard()
    rank, world_size = rank or 0, world_size or 1
    was_training = model.training
    model.eval()
    # [top-1 hits, top-5 hits, summed loss, count], accumulated on the device (no sync per batch)
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    try:
        for x, y in split.batches(
            batch_size, device=device, rank=rank, world_size=world_size, channels_last=channels_last
        ):
            logits = model(x).float()
            k = min(5, logits.shape[1])
            hits = logits.topk(k, dim=1).indices.eq(y[:, None])
            sums[0] += hits[:, 0].sum()
            sums[1] += hits.any(dim=1).sum()
            sums[2] += torch.nn.functional.cross_entropy(logits, y, reduction="sum").double()
            sums[3] += y.numel()
    finally:
        model.train(was_training)
    if world_size > 1 and distributed.initialized():
        torch.distributed.all_reduce(sums)
    top1, top5, loss, count = sums.tolist()
    n = max(1.0, count)
    return {"top1": top1 / n, "top5": top5 / n, "loss": loss / n, "count": int(count)}
