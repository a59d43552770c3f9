"""Top-1 / top-5 accuracy and mean loss of a model on a split (DDP-aware: ranks sum their shares)."""

from __future__ import annotations

import torch


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    split,
    device: torch.device | str = "cpu",
    *,
    batch_size: int | None = None,
    channels_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> dict:
    """{"top1", "top5", "loss", "count"} in fp32 (the deployed arithmetic), model left as it was."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)
    try:
        for x, y in split.batches(
            batch_size, device=device, rank=rank, world_size=world_size, channels_last=channels_last
        ):
            logits = model(x).float()
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            hits = top.eq(y[:, None])
            sums += torch.tensor(
                [
                    hits[:, 0].sum().item(),
                    hits.any(dim=1).sum().item(),
                    torch.nn.functional.cross_entropy(logits, y, reduction="sum").item(),
                    y.numel(),
                ],
                dtype=torch.float64,
            )
    finally:
        model.train(was_training)
    if world_size > 1 and torch.distributed.is_initialized():
        torch.distributed.all_reduce(sums)
    count = max(1.0, sums[3].item())
    return {
        "top1": sums[0].item() / count,
        "top5": sums[1].item() / count,
        "loss": sums[2].item() / count,
        "count": int(sums[3].item()),
    }
