"""The imagenet dataset: an ImageFolder tree; validation carved from train/, test = the val/ folder.

Every split is read at one `image_size` (the stage chooses it: see stages/training.py
`image_size_choice`); the data info records it as `image_shape`, with the transforms."""

from __future__ import annotations

from pathlib import Path

import torch

from mncli.data.augment import Augment
from mncli.data.datasets import DataBundle, _split_indices
from mncli.data.folder import FolderSplit, describe_transforms, eval_resize, scan_folder
from mncli.errors import BadInput


def imagenet_bundle(
    folder: Path,
    *,
    augment: Augment,
    val_size: int | None,
    seed: int,
    subset: int | None,
    batch_size: int,
    image_size: int,
    mean_std,
) -> DataBundle:
    samples, classes = scan_folder(folder / "train")
    if not samples:
        raise BadInput(f"{folder / 'train'} holds no images", hint="expected train/<class>/<image>.JPEG")
    if val_size is None:
        val_size = min(10_000, max(1, len(samples) // 50))
    train_idx, val_idx = _split_indices(len(samples), val_size, seed)
    if subset is not None:
        if subset <= 0:
            raise BadInput(f"--subset must be positive, got {subset}", hint="e.g. --subset 2000")
        train_idx = train_idx[:subset]
    mean, std = mean_std

    def split(items: list[tuple[str, int]], indices: torch.Tensor | list[int], aug: Augment) -> FolderSplit:
        return FolderSplit(
            items,
            [int(i) for i in indices],
            image_size=image_size,
            mean=mean,
            std=std,
            augment=aug,
            batch_size=batch_size,
        )

    def load_test() -> FolderSplit:
        test_samples, test_classes = scan_folder(folder / "val")
        if test_classes != classes:
            raise BadInput(
                f"{folder / 'val'} has other class folders than {folder / 'train'}",
                hint="val/ must have the same <class> folders as train/",
            )
        return split(test_samples, range(len(test_samples)), Augment())

    info = {
        "source": str(folder),
        "dataset": "imagenet",
        "train_size": len(train_idx),
        "val_size": val_size,
        "split_seed": seed,
        "subset": subset,
        "augment": augment.to_dict(),
        "mean": list(mean),
        "std": list(std),
        "image_shape": [3, image_size, image_size],
        "eval_resize": eval_resize(image_size),
        "transforms": describe_transforms(image_size, augment),
        "num_classes": len(classes),
    }
    return DataBundle(
        "imagenet",
        len(classes),
        3,
        image_size,
        split(samples, train_idx, augment),
        split(samples, val_idx, Augment()),
        info,
        load_test,
    )
