"""`load_data`: a dataset by name -> DataBundle (train / val / lazily loaded test splits + manifest info).

The validation split is carved out of the training set by a permutation seeded with the *data* seed
(`seed`, default 0, independent of the training seed), so every stage of a pipeline holds out the same
images. `subset=N` keeps the first N images of the remaining (already shuffled) training split.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mncli.data.augment import Augment
from mncli.data.formats import load_cifar, load_idx_pair
from mncli.data.locate import locate
from mncli.data.splits import TensorSplit, mix_seed
from mncli.errors import BadInput

DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "imagenet", "synthetic")

_ALIASES = {"fmnist": "fashion-mnist", "fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist"}

MEAN_STD = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

IMAGENET_SIZE = 224  # imagenet's resolution when neither the model nor --image-size gives one
IMAGE_SIZES = (16, 1024)  # the --image-size accepted (only imagenet is resized: the others have theirs)

# Per-dataset augmentation defaults: no flips for digits (a flipped 2 is not a 2).
DEFAULT_AUGMENT = {
    "fashion-mnist": Augment(crop=2, flip=True),
    "mnist": Augment(crop=2),
    "cifar10": Augment(crop=4, flip=True),
    "cifar100": Augment(crop=4, flip=True),
    "imagenet": Augment(crop=1, flip=True),  # crop>0 switches on RandomResizedCrop
    "synthetic": Augment(),
}


@dataclass
class DataBundle:
    name: str
    num_classes: int
    in_channels: int
    image_size: int
    train: Any
    val: Any
    info: dict
    _load_test: Callable[[], Any] | None = field(default=None, repr=False)
    _test: Any = field(default=None, repr=False)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    @property
    def test(self):
        """The test split, read from disk on first use (only when a stage asks for test accuracy)."""
        if self._test is None and self._load_test is not None:
            self._test = self._load_test()
            self.info["test_size"] = len(self._test)
        return self._test


def canonical_name(name: str) -> str:
    base = name.split(":", 1)[0].strip().lower()
    base = _ALIASES.get(base, base)
    if base not in DATASETS:
        raise BadInput(f"unknown dataset {name!r}", hint="choose one of: " + ", ".join(DATASETS))
    return base


def scoring_task(dataset: str | None) -> str:
    """The task a network for `dataset` is scored as: the dataset's canonical name (mncli.scoring
    scores the ones without constants of their own against cifar100's, saying so), cifar100 when none."""
    return canonical_name(dataset) if dataset else "cifar100"


def check_image_size(size: int) -> int:
    """`size` when it is a resolution --image-size accepts (IMAGE_SIZES), else BadInput."""
    low, high = IMAGE_SIZES
    if isinstance(size, bool) or not isinstance(size, int) or not low <= size <= high:
        raise BadInput(f"--image-size must be {low} to {high} px, got {size}", hint="e.g. --image-size 224")
    return size


def _check_fixed_size(name: str, shape: tuple[int, ...], image_size: int | None) -> None:
    """BadInput for an image size other than the one a dataset of fixed size has (CHW `shape`)."""
    height, width = shape[1:]
    if image_size is not None and (image_size, image_size) != (height, width):
        size = f"{height}" if height == width else f"{height}x{width}"
        raise BadInput(
            f"{name} images are {size} px; --image-size {image_size} applies to imagenet only",
            hint="drop --image-size: only imagenet is resized",
        )


def default_augment(name: str) -> Augment:
    return DEFAULT_AUGMENT[canonical_name(name)]


def _split_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not 0 <= val_size < n:
        raise BadInput(
            f"validation split of {val_size} images is not possible with {n} training images",
            hint="pass a smaller --val-size",
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, 0xDA7A)))
    return perm[val_size:], perm[:val_size]


def _tensor_bundle(
    name: str,
    train_xy: tuple[torch.Tensor, torch.Tensor],
    load_test_xy: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    *,
    num_classes: int,
    mean_std,
    augment: Augment,
    val_size: int,
    seed: int,
    subset: int | None,
    batch_size: int,
    info: dict,
) -> DataBundle:
    images, labels = train_xy
    train_idx, val_idx = _split_indices(len(labels), val_size, seed)
    if subset is not None:
        if subset <= 0:
            raise BadInput(f"--subset must be positive, got {subset}", hint="e.g. --subset 2000")
        train_idx = train_idx[:subset]
    mean, std = mean_std
    train = TensorSplit(images[train_idx], labels[train_idx], mean, std, augment, batch_size)
    val = TensorSplit(images[val_idx], labels[val_idx], mean, std, Augment(), batch_size)

    def load_test() -> TensorSplit:
        x, y = load_test_xy()
        return TensorSplit(x, y, mean, std, Augment(), batch_size)

    info.update(
        dataset=name,
        train_size=len(train),
        val_size=len(val),
        split_seed=seed,
        subset=subset,
        augment=augment.to_dict(),
        mean=list(mean),
        std=list(std),
        image_shape=list(images.shape[1:]),
        transforms={"train": f"augment {augment.describe()}", "eval": "as stored"},
        num_classes=num_classes,
    )
    return DataBundle(
        name, num_classes, int(images.shape[1]), int(images.shape[2]), train, val, info, load_test
    )


def parse_synthetic(name: str) -> dict:
    """`synthetic` or `synthetic:classes=100,shape=3x32x32,train=2000,test=500`."""
    opts = {"classes": 10, "shape": (1, 28, 28), "train": 2000, "test": 500}
    _, _, rest = name.partition(":")
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, _, value = part.partition("=")
        try:
            if key == "shape":
                dims = tuple(int(v) for v in re.split(r"[x,]", value))
                if len(dims) != 3 or min(dims) <= 0:
                    raise ValueError(value)
                opts["shape"] = dims
            elif key in ("classes", "train", "test"):
                opts[key] = int(value)
                if opts[key] <= 0:
                    raise ValueError(value)
            else:
                raise ValueError(key)
        except ValueError:
            raise BadInput(
                f"bad synthetic dataset option {part!r}",
                hint="e.g. synthetic:classes=100,shape=3x32x32,train=2000,test=500",
            ) from None
    return opts


def synthetic_tensors(
    classes: int, shape: tuple, count: int, stream: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable random images: a fixed prototype per class plus noise, as uint8; labels cycle."""
    gen = torch.Generator().manual_seed(mix_seed(classes, *shape))
    prototypes = torch.rand((classes, *shape), generator=gen) * 255.0
    gen = torch.Generator().manual_seed(mix_seed(classes, *shape, count, stream))
    labels = torch.randint(0, classes, (count,), generator=gen)
    noise = torch.randn((count, *shape), generator=gen) * 60.0
    images = (prototypes[labels] + noise).clamp(0, 255).to(torch.uint8)
    return images, labels.to(torch.int64)


# What the file datasets hold: a file of another shape or with labels out of range is not that dataset.
_IMAGE_SHAPES = {
    "fashion-mnist": (1, 28, 28),
    "mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
}


def _checked(name: str, folder: Path, split: str, num_classes: int, read: Callable) -> Callable:
    """`read` with its (images, labels) checked against what dataset `name` is, as BadInput."""

    def load() -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = read()
        shape, expected = tuple(images.shape[1:]), _IMAGE_SHAPES[name]
        if shape != expected:
            raise BadInput(
                f"the {split} images in {folder} are {'x'.join(map(str, shape))}, "
                f"{name}'s are {'x'.join(map(str, expected))}",
                hint="re-download the dataset",
            )
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise BadInput(
                f"the {split} labels in {folder} run from {int(labels.min())} to {int(labels.max())}; "
                f"{name} has classes 0 to {num_classes - 1}",
                hint="re-download the dataset",
            )
        return images, labels

    return load


def _file_loaders(name: str, folder: Path):
    if name in ("fashion-mnist", "mnist"):
        num_classes = 10
        read_train, read_test = (
            (lambda: load_idx_pair(folder, "train")),
            (lambda: load_idx_pair(folder, "t10k")),
        )
    elif name == "cifar10":
        num_classes = 10
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        read_train = lambda: load_cifar(folder, train_files, "labels")
        read_test = lambda: load_cifar(folder, ["test_batch"], "labels")
    else:
        num_classes = 100
        read_train = lambda: load_cifar(folder, ["train"], "fine_labels")
        read_test = lambda: load_cifar(folder, ["test"], "fine_labels")
    return (
        num_classes,
        _checked(name, folder, "training", num_classes, read_train),
        _checked(name, folder, "test", num_classes, read_test),
    )


def load_data(
    name: str,
    *,
    data_dir: Path | str | None = None,
    download: bool = False,
    val_size: int | None = None,
    seed: int = 0,
    subset: int | None = None,
    batch_size: int = 128,
    augment: Augment | None = None,
    image_size: int | None = None,
) -> DataBundle:
    """Load dataset `name` (see DATASETS; `synthetic:...` takes options) and split it.

    val_size: images held out of the training set for validation (default 5,000 for the 10/100-class
    sets, 10% for synthetic, 10,000 for imagenet). seed: the split seed. augment: the training
    augmentation (default: per dataset). image_size: the resolution imagenet is read at (default
    IMAGENET_SIZE); the other datasets have a fixed size, and any other image_size is BadInput."""
    base = canonical_name(name)
    augment = DEFAULT_AUGMENT[base] if augment is None else augment
    if image_size is not None:
        check_image_size(image_size)
    if base == "synthetic":
        opts = parse_synthetic(name)
        shape, classes = opts["shape"], opts["classes"]
        _check_fixed_size(name, shape, image_size)
        mean_std = ((0.5,) * shape[0], (0.29,) * shape[0])
        info = {"source": "synthetic", "options": {**opts, "shape": list(shape)}}
        return _tensor_bundle(
            name,
            synthetic_tensors(classes, shape, opts["train"], 0),
            lambda: synthetic_tensors(classes, shape, opts["test"], 1),
            num_classes=classes,
            mean_std=mean_std,
            augment=augment,
            val_size=opts["train"] // 10 if val_size is None else val_size,
            seed=seed,
            subset=subset,
            batch_size=batch_size,
            info=info,
        )
    if base != "imagenet":
        _check_fixed_size(base, _IMAGE_SHAPES[base], image_size)
    folder = locate(base, data_dir, download)
    if base == "imagenet":
        from mncli.data.imagenet import imagenet_bundle

        return imagenet_bundle(
            folder,
            augment=augment,
            val_size=val_size,
            seed=seed,
            subset=subset,
            batch_size=batch_size,
            image_size=image_size or IMAGENET_SIZE,
            mean_std=MEAN_STD[base],
        )
    num_classes, read_train, read_test = _file_loaders(base, folder)
    return _tensor_bundle(
        base,
        read_train(),
        read_test,
        num_classes=num_classes,
        mean_std=MEAN_STD[base],
        augment=augment,
        val_size=5000 if val_size is None else val_size,
        seed=seed,
        subset=subset,
        batch_size=batch_size,
        info={"source": str(folder)},
    )
