"""Write a small CIFAR-100 in the dataset's own format, for the smoke runs of the reproduction targets.

    python reproduce/smoke_data.py DIR [--train-per-class 4] [--test-per-class 2]

writes DIR/cifar-100-python/{train,test,meta} as the published archive holds them: pickles of protocol 2
whose strings are Python 2 byte strings (they load as b'data' with encoding="bytes" and as 'data' with
encoding="latin1", the way torchvision and mncli read the real files); the arrays are pickled by the
installed numpy, under its names for them. train and test hold b'data'
(uint8, N x 3072, the red, green and blue planes of each 32 x 32 image), b'fine_labels',
b'coarse_labels', b'filenames' and b'batch_label'; meta holds b'fine_label_names' and
b'coarse_label_names'. Every one of the 100 classes has the same number of images. Each class has its
own colour and stripe direction, with noise on top, so a network learns something in a few steps.
"""

from __future__ import annotations

import argparse
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


def images_of(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """N x 3072 uint8 images: each class a colour with horizontal or vertical stripes, plus noise."""
    palette = np.random.default_rng(100).integers(40, 216, (100, 3))
    stripes = (np.arange(32) // 4 % 2 * 60 - 30).astype(np.int64)
    n = len(labels)
    images = np.repeat(palette[labels][:, :, None, None], 32, axis=2).repeat(32, axis=3)
    vertical = (labels % 2 == 1)[:, None, None, None]
    images = images + np.where(vertical, stripes[None, None, None, :], stripes[None, None, :, None])
    images = images + rng.normal(0, 20, images.shape).round().astype(np.int64)
    return np.clip(images, 0, 255).astype(np.uint8).reshape(n, 3 * 32 * 32)


def batch(name: str, per_class: int, rng: np.random.Generator) -> dict:
    labels = np.tile(np.arange(100), per_class)
    rng.shuffle(labels)
    return {
        "filenames": [f"{FINE_NAMES[label]}_s_{i:06d}.png" for i, label in enumerate(labels)],
        "batch_label": f"{name} batch 1 of 1",
        "fine_labels": [int(label) for label in labels],
        "coarse_labels": [COARSE_OF_FINE[int(label)] for label in labels],
        "data": images_of(labels, rng),
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="folder to write cifar-100-python/ into")
    parser.add_argument("--train-per-class", type=int, default=4)
    parser.add_argument("--test-per-class", type=int, default=2)
    args = parser.parse_args(argv)
    if args.train_per_class < 1 or args.test_per_class < 1:
        parser.error("--train-per-class and --test-per-class must be at least 1")
    folder = write_smoke_cifar100(args.dir, args.train_per_class, args.test_per_class)
    print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
