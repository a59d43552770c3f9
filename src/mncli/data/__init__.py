"""Datasets, splits and batch augmentation.

data = load_data("fashion-mnist", data_dir=None, val_size=None, seed=0, subset=None, batch_size=128)
data.num_classes, data.in_channels, data.image_size, data.info   # info goes into the manifest
for x, y in data.train.batches(epoch=3, seed=0, device="cpu"): ...  # seeded order + augmentation
for x, y in data.val: ...                                           # stored order, no augmentation
data.test                                                           # read from disk on first use
"""

from mncli.data.augment import Augment, parse_augment
from mncli.data.datasets import (
    DATASETS,
    DataBundle,
    canonical_name,
    default_augment,
    load_data,
    scoring_task,
)

__all__ = [
    "Augment",
    "DATASETS",
    "DataBundle",
    "canonical_name",
    "default_augment",
    "load_data",
    "parse_augment",
    "scoring_task",
]
