"""The real on-disk formats (IDX, CIFAR pickle batches, an ImageFolder of PNGs), written tiny by the
tests, and where datasets are looked for."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from mncli.data import load_data
from mncli.data.formats import read_idx
from mncli.errors import BadInput


def write_idx(path, array: np.ndarray, compress: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(f"{path}.gz", "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


def make_idx_dataset(folder, n_train=60, n_test=20, compress=True, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, compress)
        arrays[prefix] = (images, labels)
    return arrays


def make_cifar(folder, classes: int, per_file: int = 12):
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    key = "labels" if classes == 10 else "fine_labels"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if classes == 10 else ["train", "test"]
    written = {}
    for name in names:
        data = rng.integers(0, 256, (per_file, 3 * 32 * 32), dtype=np.uint8)
        labels = list(rng.integers(0, classes, per_file))
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": data, key: labels}, handle)
        written[name] = (data, labels)
    return written


def test_idx_round_trip_gz_and_raw(tmp_path):
    for compress in (True, False):
        folder = tmp_path / ("gz" if compress else "raw")
        arrays = make_idx_dataset(folder, compress=compress)
        suffix = ".gz" if compress else ""
        images = read_idx(folder / f"train-images-idx3-ubyte{suffix}")
        assert images.shape == (60, 28, 28)
        assert np.array_equal(images, arrays["train"][0])


def test_truncated_idx_is_bad_input(tmp_path):
    arrays = make_idx_dataset(tmp_path / "d", compress=False)
    path = tmp_path / "d" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(BadInput, match="truncated"):
        read_idx(path)
    assert arrays


def test_fashion_mnist_from_data_dir_splits_and_test(tmp_path):
    arrays = make_idx_dataset(tmp_path / "fashion-mnist")
    data = load_data("fashion-mnist", data_dir=tmp_path, val_size=10, batch_size=16)
    assert (data.num_classes, data.in_channels, data.image_size) == (10, 1, 28)
    assert (len(data.train), len(data.val)) == (50, 10)
    assert data.info["val_size"] == 10 and data.info["split_seed"] == 0
    # train and val are disjoint and together are the whole training file
    everything = torch.cat([data.train.images, data.val.images]).reshape(60, -1)
    original = torch.from_numpy(arrays["train"][0]).reshape(60, -1)
    assert sorted(map(tuple, everything.tolist())) == sorted(map(tuple, original.tolist()))
    assert len(data.test) == 20
    x, y = next(iter(data.test))
    assert x.dtype == torch.float32 and x.shape == (16, 1, 28, 28) and y.dtype == torch.int64


def test_split_is_seeded(tmp_path):
    make_idx_dataset(tmp_path / "mnist")
    a = load_data("mnist", data_dir=tmp_path, val_size=10)
    b = load_data("mnist", data_dir=tmp_path, val_size=10)
    c = load_data("mnist", data_dir=tmp_path, val_size=10, seed=1)
    assert torch.equal(a.val.images, b.val.images)
    assert not torch.equal(a.val.images, c.val.images)


def test_subset_takes_first_n_of_the_training_split(tmp_path):
    make_idx_dataset(tmp_path / "mnist")
    full = load_data("mnist", data_dir=tmp_path, val_size=10)
    part = load_data("mnist", data_dir=tmp_path, val_size=10, subset=7)
    assert len(part.train) == 7
    assert torch.equal(part.train.images, full.train.images[:7])
    assert torch.equal(part.val.images, full.val.images)


def test_mncli_data_env_is_searched(tmp_path, monkeypatch):
    make_idx_dataset(tmp_path / "MNIST" / "raw")  # torchvision's layout
    monkeypatch.setenv("MNCLI_DATA", str(tmp_path))
    assert len(load_data("mnist", val_size=10).train) == 50


def test_missing_dataset_lists_places_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("MNCLI_DATA", str(tmp_path / "env"))
    (tmp_path / "env").mkdir()  # folders that exist but lack the dataset (missing ones: test_data_hostile)
    (tmp_path / "mine").mkdir()
    with pytest.raises(BadInput) as info:
        load_data("cifar10", data_dir=tmp_path / "mine")
    message = info.value.message
    assert "mine" in message and "env" in message and "/usr/share/datasets/cifar10" in message
    assert "--download" in info.value.hint


def test_unknown_dataset():
    with pytest.raises(BadInput, match="unknown dataset"):
        load_data("imagenette")


def test_cifar10_pickles(tmp_path):
    written = make_cifar(tmp_path / "cifar-10-batches-py", 10)
    data = load_data("cifar10", data_dir=tmp_path, val_size=6)
    assert (data.num_classes, data.in_channels, data.image_size) == (10, 3, 32)
    assert len(data.train) + len(data.val) == 60
    assert len(data.test) == 12
    first = torch.from_numpy(written["test_batch"][0][0].reshape(3, 32, 32))
    assert torch.equal(data.test.images[0], first)
    assert data.test.labels.tolist() == [int(v) for v in written["test_batch"][1]]


def test_cifar100_pickles(tmp_path):
    make_cifar(tmp_path / "cifar-100-python", 100, per_file=30)
    data = load_data("cifar100", data_dir=tmp_path, val_size=5)
    assert data.num_classes == 100 and len(data.train) == 25 and len(data.test) == 30


def test_imagefolder_of_pngs(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 2)):
        for cls in ("cat", "dog"):
            folder = tmp_path / "imagenet" / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    data = load_data("imagenet", data_dir=tmp_path, val_size=2, image_size=32, batch_size=4)
    data.train.workers = 0
    data.test.workers = 0
    assert data.num_classes == 2 and len(data.train) == 10 and len(data.val) == 2 and len(data.test) == 4
    x, y = next(data.train.batches(epoch=0, seed=0))
    x2, _ = next(data.train.batches(epoch=0, seed=0))
    assert x.shape == (4, 3, 32, 32) and torch.equal(x, x2)  # seeded crops repeat
    tx, ty = next(iter(data.test))
    assert tx.shape == (4, 3, 32, 32) and set(ty.tolist()) <= {0, 1}


def test_synthetic_is_deterministic_and_configurable():
    a = load_data("synthetic:classes=7,shape=3x12x10,train=70,test=21")
    b = load_data("synthetic:classes=7,shape=3x12x10,train=70,test=21")
    assert a.num_classes == 7 and a.in_channels == 3 and a.train.images.shape[1:] == (3, 12, 10)
    assert torch.equal(a.train.images, b.train.images) and len(a.test) == 21
    with pytest.raises(BadInput):
        load_data("synthetic:shape=3x12")
