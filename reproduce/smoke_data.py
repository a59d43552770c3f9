"""Write the small datasets and checkpoints of the reproduction targets' smoke runs, in the real formats.

    python reproduce/smoke_data.py DIR [--dataset cifar100] [--train-per-class 4] [--test-per-class 2]
    python reproduce/smoke_data.py DIR --dataset imagenet [--classes 10] [--image-size 64] ...

cifar100 writes DIR/cifar-100-python/{train,test,meta} as the published archive holds them: pickles of
protocol 2 whose strings are Python 2 byte strings (they load as b'data' with encoding="bytes" and as
'data' with encoding="latin1", the way torchvision and mncli read the real files); the arrays are
pickled by the installed numpy, under its names for them. train and test hold b'data'
(uint8, N x 3072, the red, green and blue planes of each 32 x 32 image), b'fine_labels',
b'coarse_labels', b'filenames' and b'batch_label'; meta holds b'fine_label_names' and
b'coarse_label_names'. Every one of the 100 classes has the same number of images.

imagenet writes an ImageFolder tree as ImageNet's is unpacked: DIR/imagenet/train/<wnid>/<wnid>_<i>.JPEG
and DIR/imagenet/val/<wnid>/ILSVRC2012_val_<n>.JPEG, RGB JPEGs of --image-size px, one folder per
class named like a WordNet id.

In both, each class has its own colour and stripe direction, with noise on top, so a network learns
something in a few steps. `write_smoke_efficientnet` saves a randomly initialised lukemelas
efficientnet_pytorch model's state dict with DataParallel's `module.` prefix on every key, as the
Distiller fork's checkpoints hold it: the stand-in for the published pretrained weights.
"""

from __future__ import annotations

import argparse
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

# CIFAR-100's 20 superclasses and their 5 classes each, as the dataset's page lists them; the label
# numbers are the positions in the sorted lists, as in the published meta file.
SUPERCLASSES = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
FINE_NAMES = sorted(name for members in SUPERCLASSES.values() for name in members)
COARSE_NAMES = sorted(SUPERCLASSES)
COARSE_OF_FINE = {
    FINE_NAMES.index(name): COARSE_NAMES.index(coarse)
    for coarse, members in SUPERCLASSES.items()
    for name in members
}
FOLDER = "cifar-100-python"
IMAGENET_FOLDER = "imagenet"  # one of the folders mncli looks for imagenet in under --data-dir
FASHION_MNIST_FOLDER = "fashion-mnist"  # likewise for fashion-mnist


class Python2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2 wrote it: str and bytes both as byte strings (SHORT_BINSTRING or
    BINSTRING), which is what the published CIFAR pickles hold (the pure-Python pickler, whose
    dispatch table can be changed per class)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_byte_string(self, obj: str | bytes) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = save_byte_string
    dispatch[bytes] = save_byte_string


def write_pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as handle:
        Python2Pickler(handle, protocol=2).dump(obj)


def images_of(labels: np.ndarray, rng: np.random.Generator, classes: int = 100, size: int = 32) -> np.ndarray:
    """N x 3 x size x size uint8 images: each class a colour with horizontal or vertical stripes
    (4 px wide), plus noise."""
    palette = np.random.default_rng(100).integers(40, 216, (classes, 3))
    stripes = (np.arange(size) // 4 % 2 * 60 - 30).astype(np.int64)
    images = np.repeat(palette[labels][:, :, None, None], size, axis=2).repeat(size, axis=3)
    vertical = (labels % 2 == 1)[:, None, None, None]
    images = images + np.where(vertical, stripes[None, None, None, :], stripes[None, None, :, None])
    images = images + rng.normal(0, 20, images.shape).round().astype(np.int64)
    return np.clip(images, 0, 255).astype(np.uint8)


def batch(name: str, per_class: int, rng: np.random.Generator) -> dict:
    labels = np.tile(np.arange(100), per_class)
    rng.shuffle(labels)
    return {
        "filenames": [f"{FINE_NAMES[label]}_s_{i:06d}.png" for i, label in enumerate(labels)],
        "batch_label": f"{name} batch 1 of 1",
        "fine_labels": [int(label) for label in labels],
        "coarse_labels": [COARSE_OF_FINE[int(label)] for label in labels],
        "data": images_of(labels, rng).reshape(len(labels), 3 * 32 * 32),
    }


def write_smoke_cifar100(root: Path, train_per_class: int = 4, test_per_class: int = 2) -> Path:
    """Write DIR/cifar-100-python/{train,test,meta} (100 x per-class images each); returns that folder."""
    folder = Path(root) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    write_pickle(folder / "train", batch("training", train_per_class, rng))
    write_pickle(folder / "test", batch("testing", test_per_class, rng))
    write_pickle(folder / "meta", {"fine_label_names": FINE_NAMES, "coarse_label_names": COARSE_NAMES})
    return folder


def wnid(label: int) -> str:
    """A class folder's name, shaped like ImageNet's WordNet ids (n01440764, ...)."""
    return f"n{label + 1:08d}"


def write_jpegs(folder: Path, labels: np.ndarray, names: list[str], rng, classes: int, size: int) -> None:
    from PIL import Image

    for label, name, image in zip(labels, names, images_of(labels, rng, classes, size), strict=True):
        target = folder / wnid(int(label)) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.transpose(1, 2, 0)).save(target, format="JPEG", quality=90)


def write_smoke_imagenet(
    root: Path, classes: int = 10, train_per_class: int = 4, test_per_class: int = 2, image_size: int = 64
) -> Path:
    """Write DIR/imagenet/{train,val}/<wnid>/*.JPEG (classes x per-class images each); returns that
    folder."""
    folder = Path(root) / IMAGENET_FOLDER
    rng = np.random.default_rng(0)
    train = np.repeat(np.arange(classes), train_per_class)
    names = [f"{wnid(int(label))}_{i % train_per_class + 1}.JPEG" for i, label in enumerate(train)]
    write_jpegs(folder / "train", train, names, rng, classes, image_size)
    val = np.tile(np.arange(classes), test_per_class)
    names = [f"ILSVRC2012_val_{n + 1:08d}.JPEG" for n in range(len(val))]
    write_jpegs(folder / "val", val, names, rng, classes, image_size)
    return folder


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file as the MNIST family ships it, gzipped: two zero bytes, the type (0x08, unsigned
    byte), the number of dimensions, each dimension as a big-endian int32, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_smoke_fashion_mnist(root: Path, train_per_class: int = 20, test_per_class: int = 10) -> Path:
    """DIR/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz: 28 x 28 grey images of 10
    classes (the mean of images_of's colour planes)."""
    folder = Path(root) / FASHION_MNIST_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = np.tile(np.arange(10), per_class).astype(np.uint8)
        rng.shuffle(labels)
        images = images_of(labels.astype(np.int64), rng, classes=10, size=28).mean(axis=1).round()
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images.astype(np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


def write_smoke_efficientnet(path: Path, name: str, num_classes: int) -> Path:
    """Save efficientnet_pytorch's `EfficientNet.from_name(name, num_classes=...)`, randomly initialised
    (seed 0), as a state dict whose keys carry DataParallel's `module.` prefix."""
    import torch
    from efficientnet_pytorch import EfficientNet

    torch.manual_seed(0)
    model = EfficientNet.from_name(name, num_classes=num_classes)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({f"module.{key}": value for key, value in model.state_dict().items()}, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "dir", type=Path, help="folder to write cifar-100-python/, imagenet/ or fashion-mnist/ into"
    )
    parser.add_argument("--dataset", choices=("cifar100", "imagenet", "fashion-mnist"), default="cifar100")
    parser.add_argument("--train-per-class", type=int, default=4)
    parser.add_argument("--test-per-class", type=int, default=2)
    parser.add_argument("--classes", type=int, default=10, help="imagenet: the number of classes")
    parser.add_argument("--image-size", type=int, default=64, help="imagenet: the JPEGs' width and height")
    args = parser.parse_args(argv)
    if min(args.train_per_class, args.test_per_class, args.classes, args.image_size) < 1:
        parser.error("--train-per-class, --test-per-class, --classes and --image-size must be at least 1")
    if args.dataset == "cifar100":
        folder = write_smoke_cifar100(args.dir, args.train_per_class, args.test_per_class)
    elif args.dataset == "fashion-mnist":
        folder = write_smoke_fashion_mnist(args.dir, args.train_per_class, args.test_per_class)
    else:
        folder = write_smoke_imagenet(
            args.dir, args.classes, args.train_per_class, args.test_per_class, args.image_size
        )
    print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
