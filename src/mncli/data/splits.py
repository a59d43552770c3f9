"""Splits: the iterables the engine trains and evaluates on.

`split.batches(batch_size, epoch=None, ...)` yields `(x, y)`: x float NCHW normalised, y int64.
With `epoch=None` the order is the stored order and nothing is augmented (evaluation). With an epoch,
the order is a permutation seeded by (seed, epoch) and each batch's augmentation by (seed, epoch,
batch index), so a run resumed at any batch repeats the uninterrupted run exactly. Under DDP every
rank takes an equal-sized strided share of the same permutation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from mncli.data import augment as aug_ops
from mncli.data.augment import Augment


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (a splitmix-style hash, stable across platforms)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (int(part) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        value ^= value >> 31
    return value & 0x7FFFFFFFFFFFFFFF


def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """This rank's share of the epoch's seeded permutation (equal length on every rank)."""
    gen = torch.Generator().manual_seed(mix_seed(seed, epoch, 1))
    perm = torch.randperm(n, generator=gen)
    per_rank = n // world_size
    return perm[rank::world_size][:per_rank]


@dataclass
class TensorSplit:
    """Images held in memory as uint8 (N,C,H,W) with int64 labels; normalised per batch."""

    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: Augment
    batch_size: int = 128

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def num_batches(
        self, batch_size: int | None = None, *, world_size: int = 1, drop_last: bool = False
    ) -> int:
        size = batch_size or self.batch_size
        n = len(self) // world_size
        return n // size if drop_last else -(-n // size)

    def pin(self) -> None:
        """Page-lock the uint8 tensors so CUDA copies are asynchronous."""
        if torch.cuda.is_available() and not self.images.is_pinned():
            self.images = self.images.pin_memory()
            self.labels = self.labels.pin_memory()

    def batches(
        self,
        batch_size: int | None = None,
        *,
        epoch: int | None = None,
        seed: int = 0,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        drop_last: bool = False,
        channels_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        size = batch_size or self.batch_size
        device = torch.device(device)
        if epoch is None:
            order = torch.arange(len(self))[rank::world_size] if world_size > 1 else None
        else:
            order = epoch_order(len(self), seed, epoch, rank, world_size)
        total = len(self) if order is None else len(order)
        stop = (total // size) * size if drop_last else total
        mean = torch.tensor(self.mean, device=device).view(1, -1, 1, 1) * 255.0
        inv_std = 1.0 / (torch.tensor(self.std, device=device).view(1, -1, 1, 1) * 255.0)
        non_blocking = device.type == "cuda"
        for index, begin in enumerate(range(start * size, stop, size)):
            batch_index = start + index
            if order is None:
                x = self.images[begin : begin + size]
                y = self.labels[begin : begin + size]
            else:
                idx = order[begin : begin + size]
                x, y = self.images[idx], self.labels[idx]
            x = x.to(device, non_blocking=non_blocking).float()
            y = y.to(device, non_blocking=non_blocking)
            if epoch is not None and self.augment.enabled:
                gen = torch.Generator().manual_seed(mix_seed(seed, epoch, batch_index, 2))
                x = aug_ops.apply_before_normalise(x, self.augment, gen)
                x = (x - mean) * inv_std
                x = aug_ops.apply_after_normalise(x, self.augment, gen)
            else:
                x = (x - mean) * inv_std
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches()

    def head(self, count: int) -> TensorSplit:
        return TensorSplit(
            self.images[:count], self.labels[:count], self.mean, self.std, self.augment, self.batch_size
        )
