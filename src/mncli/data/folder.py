"""ImageNet-scale data: an ImageFolder tree (train/<class>/*.jpg, val/<class>/*.jpg) read by a
DataLoader with worker processes. Per-sample augmentation (random resized crop, flip) is seeded by
(seed, epoch, sample position), so the order and the crops repeat exactly on resume."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch

from mncli.data import augment as aug_ops
from mncli.data.augment import Augment
from mncli.data.splits import epoch_order, mix_seed


class _Images(torch.utils.data.Dataset):
    """Samples (path, label) with a train or eval transform; items are requested as (index, seed)."""

    def __init__(self, samples: list[tuple[str, int]], transform, train: bool):
        self.samples = samples
        self.transform = transform
        self.train = train

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item):
        from PIL import Image

        index, sample_seed = item
        path, label = self.samples[index]
        with open(path, "rb") as handle:
            image = Image.open(handle).convert("RGB")
        if self.train:
            torch.manual_seed(sample_seed)
        return self.transform(image), label


def scan_folder(root: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """The (path, class index) pairs of an ImageFolder tree, classes sorted by name."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    mapping = {name: i for i, name in enumerate(classes)}
    return make_dataset(str(root), mapping, extensions=IMG_EXTENSIONS), classes


def default_workers() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0)) - 1))


class FolderSplit:
    """A split of an ImageFolder tree; `indices` select its samples in a fixed order."""

    def __init__(
        self,
        samples: list[tuple[str, int]],
        indices: list[int],
        *,
        image_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augment: Augment,
        batch_size: int = 128,
        workers: int | None = None,
    ):
        self.samples = samples
        self.indices = list(indices)
        self.image_size = image_size
        self.mean, self.std = mean, std
        self.augment = augment
        self.batch_size = batch_size
        self.workers = default_workers() if workers is None else workers

    def __len__(self) -> int:
        return len(self.indices)

    def num_batches(
        self, batch_size: int | None = None, *, world_size: int = 1, drop_last: bool = False
    ) -> int:
        size = batch_size or self.batch_size
        n = len(self) // world_size
        return n // size if drop_last else -(-n // size)

    def head(self, count: int) -> FolderSplit:
        copy = FolderSplit(
            self.samples,
            self.indices[:count],
            image_size=self.image_size,
            mean=self.mean,
            std=self.std,
            augment=self.augment,
            batch_size=self.batch_size,
            workers=self.workers,
        )
        return copy

    def pin(self) -> None:
        """Pinned memory is requested from the DataLoader instead."""

    def _transform(self, train: bool):
        from torchvision import transforms as T

        normalise = [T.ToTensor(), T.Normalize(self.mean, self.std)]
        if train and (self.augment.crop or self.augment.flip):
            steps = [T.RandomResizedCrop(self.image_size)]
            steps += [T.RandomHorizontalFlip()] if self.augment.flip else []
            return T.Compose(steps + normalise)
        resize = int(round(self.image_size * 256 / 224))
        return T.Compose([T.Resize(resize), T.CenterCrop(self.image_size)] + normalise)

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
        train = epoch is not None
        if train:
            positions = epoch_order(len(self), seed, epoch, rank, world_size).tolist()
        else:
            positions = list(range(rank, len(self), world_size))
        if drop_last:
            positions = positions[: (len(positions) // size) * size]
        positions = positions[start * size :]
        items = [(self.indices[p], mix_seed(seed, epoch or 0, p, 3)) for p in positions]
        loader = torch.utils.data.DataLoader(
            _Images(self.samples, self._transform(train), train),
            batch_size=size,
            sampler=items,
            num_workers=self.workers,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
        )
        for index, (x, y) in enumerate(loader):
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            if train and self.augment.cutout:
                gen = torch.Generator().manual_seed(mix_seed(seed, epoch, start + index, 2))
                x = aug_ops.apply_after_normalise(x, self.augment, gen)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches()
