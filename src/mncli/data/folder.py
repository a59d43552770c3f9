"""ImageNet-scale data: an ImageFolder tree (train/<class>/*.jpg, val/<class>/*.jpg) read by a
DataLoader with worker processes.

Each worker decodes a file to a uint8 RGB tensor (`read_image`: torchvision.io, PIL for the formats
torchvision.io cannot read) and transforms it on tensors with torchvision.transforms.v2
(`image_transform`): training RandomResizedCrop(size) and a horizontal flip, evaluation
Resize(round(size / 0.875)) and CenterCrop(size). Batches travel from the workers, and to the device,
as uint8 (a quarter of float32's bytes: the workers' float collation and shared memory cost more than
the normalisation) and are normalised on the device, in place. Per-sample augmentation is seeded by
(seed, epoch, sample position), so the order and the crops repeat exactly on resume. bench/imagenet_loader.py
measures this against torchvision's ImageFolder with PIL and torchvision.transforms."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from mncli.data import augment as aug_ops
from mncli.data.augment import Augment
from mncli.data.splits import epoch_order, mix_seed
from mncli.errors import BadInput
from mncli.host import available_cores

EVAL_CROP_FRACTION = 0.875  # the evaluation crop's share of the resized image's shorter side
MAX_WORKERS = 16
# What torchvision.io.decode_image reads; the rest of torchvision's IMG_EXTENSIONS (BMP, TIFF, PPM,
# PGM) goes to PIL, as does any file its decoders refuse.
TORCHVISION_FORMATS = (".jpg", ".jpeg", ".png", ".webp", ".gif")
_UNDECODABLE_HINT = "remove or replace the file"


def eval_resize(size: int) -> int:
    """The shorter side an image is resized to before the evaluation's centre crop of `size`."""
    return int(round(size / EVAL_CROP_FRACTION))


def read_image(path: str) -> torch.Tensor:
    """An image file as a uint8 RGB tensor (3, H, W): torchvision.io for JPEG, PNG, WebP and GIF
    (greyscale, CMYK, palette and alpha converted to RGB, 16-bit PNGs scaled to 8 bits), PIL for any
    other format and for a file torchvision.io's decoders refuse. BadInput when neither can read it."""
    if path.lower().endswith(TORCHVISION_FORMATS):
        image = _read_with_torchvision(path)
        if image is not None:
            return image
    return _read_with_pil(path)


def _read_with_torchvision(path: str) -> torch.Tensor | None:
    """The image, or None when torchvision.io cannot decode the file (or has no decoders)."""
    try:
        from torchvision.io import ImageReadMode, decode_image, read_file
    except ImportError:
        return None
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders in favour of TorchCodec's; PIL takes over once
        # they are gone
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            image = decode_image(read_file(path), mode=ImageReadMode.RGB)
        except RuntimeError:
            return None
    if image.dtype != torch.uint8:
        from torchvision.transforms.v2.functional import to_dtype

        image = to_dtype(image, torch.uint8, scale=True)
    return image


def _read_with_pil(path: str) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.v2.functional import pil_to_tensor

    try:
        with open(path, "rb") as handle:
            image = Image.open(handle).convert("RGB")
    except UnidentifiedImageError:
        raise BadInput(
            f"cannot decode {path}: not an image torchvision.io or PIL can read", hint=_UNDECODABLE_HINT
        ) from None
    except (OSError, ValueError) as exc:  # a truncated file, one that cannot be opened
        reason = getattr(exc, "strerror", None) or str(exc)
        raise BadInput(f"cannot decode {path}: {reason}", hint=_UNDECODABLE_HINT) from None
    return pil_to_tensor(image)


def image_transform(size: int, augment: Augment, train: bool):
    """The per-image transform on uint8 tensors: for training a random resized crop (augment.crop > 0)
    or the evaluation's resize and centre crop, then a flip (augment.flip); for evaluation
    Resize(eval_resize(size)) and CenterCrop(size)."""
    from torchvision.transforms import v2

    if train and augment.crop:
        steps = [v2.RandomResizedCrop(size, antialias=True)]
    else:
        steps = [v2.Resize(eval_resize(size), antialias=True), v2.CenterCrop(size)]
    if train and augment.flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


def describe_transforms(size: int, augment: Augment) -> dict[str, str]:
    """What `image_transform` (and the batch's cutout) does, for the log and the manifest."""
    evaluation = f"resize {eval_resize(size)} + centre crop {size}"
    train = [f"random-resized-crop {size}" if augment.crop else evaluation]
    train += ["flip"] if augment.flip else []
    train += [f"cutout {augment.cutout}"] if augment.cutout else []
    return {"train": " + ".join(train), "eval": evaluation}


def normalise(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 images (N, C, H, W) as float32 (x / 255 - mean) / std, on their device: x * scale + shift
    in place on the float copy (a new tensor per operation costs more than the arithmetic)."""
    scale = 1.0 / (torch.tensor(std, device=images.device).view(1, -1, 1, 1) * 255.0)
    shift = -torch.tensor(mean, device=images.device).view(1, -1, 1, 1) * 255.0 * scale
    return images.float().mul_(scale).add_(shift)


class _Images(torch.utils.data.Dataset):
    """Samples (path, label) with a train or eval transform; items are requested as (index, seed)."""

    def __init__(self, samples: list[tuple[str, int]], transform, train: bool):
        self.samples = samples
        self.transform = transform
        self.train = train

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item):
        index, sample_seed = item
        path, label = self.samples[index]
        image = read_image(path)
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
    """DataLoader workers per process: $MNCLI_WORKERS when set (0 decodes in the process itself);
    else the cores this process may run on (its CPU affinity), shared among the processes on the
    node (torchrun's LOCAL_WORLD_SIZE), less one for the process itself: at least 1, at most 16."""
    given = os.environ.get("MNCLI_WORKERS", "").strip()
    if given:
        try:
            workers = int(given)
        except ValueError:
            workers = -1
        if workers < 0:
            raise BadInput(
                f"MNCLI_WORKERS must be a whole number >= 0, got {given!r}",
                hint="e.g. MNCLI_WORKERS=8, or unset it to scale with the cores",
            )
        return workers
    try:
        local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))
    except ValueError:
        local_processes = 1
    return max(1, min(MAX_WORKERS, available_cores() // local_processes - 1))


def _worker_message(exc: BadInput) -> str:
    """Our one line from a BadInput a DataLoader worker raised: the DataLoader raises it again in this
    process with the worker's traceback as its message, our line last."""
    lines = exc.message.strip().splitlines() or [""]
    return lines[-1].removeprefix(f"{BadInput.__module__}.{BadInput.__qualname__}: ")


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
        return FolderSplit(
            self.samples,
            self.indices[:count],
            image_size=self.image_size,
            mean=self.mean,
            std=self.std,
            augment=self.augment,
            batch_size=self.batch_size,
            workers=self.workers,
        )

    def pin(self) -> None:
        """Pinned memory is requested from the DataLoader instead."""

    def loader(
        self, batch_size: int | None = None, *, epoch: int | None = None, seed: int = 0, start: int = 0,
        rank: int = 0, world_size: int = 1, drop_last: bool = False, pin_memory: bool = False,
    ) -> torch.utils.data.DataLoader:  # fmt: skip
        """The DataLoader of uint8 (N, 3, size, size) batches and their labels, which `batches`
        normalises: with an epoch the seeded order and augmentation, without one the stored order."""
        size = batch_size or self.batch_size
        train = epoch is not None
        if train:
            positions = epoch_order(len(self), seed, epoch, rank, world_size).tolist()
        else:
            positions = list(range(rank, len(self), world_size))
        if drop_last:
            positions = positions[: (len(positions) // size) * size]
        positions = positions[start * size :]
        items = [(self.indices[p], mix_seed(seed, epoch or 0, p, 3)) for p in positions]
        return torch.utils.data.DataLoader(
            _Images(self.samples, image_transform(self.image_size, self.augment, train), train),
            batch_size=size,
            sampler=items,
            num_workers=self.workers,
            pin_memory=pin_memory,
            persistent_workers=False,
        )

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
        device = torch.device(device)
        loader = self.loader(
            batch_size, epoch=epoch, seed=seed, start=start, rank=rank, world_size=world_size,
            drop_last=drop_last, pin_memory=device.type == "cuda",
        )  # fmt: skip
        try:
            for index, (x, y) in enumerate(loader):
                x = normalise(x.to(device, non_blocking=True), self.mean, self.std)
                y = y.to(device, non_blocking=True)
                if epoch is not None and self.augment.cutout:
                    gen = torch.Generator().manual_seed(mix_seed(seed, epoch, start + index, 2))
                    x = aug_ops.apply_after_normalise(x, self.augment, gen)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                yield x, y
        except BadInput as exc:
            raise BadInput(_worker_message(exc), hint=exc.hint or _UNDECODABLE_HINT) from None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches()
