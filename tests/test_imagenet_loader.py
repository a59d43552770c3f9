"""The ImageNet loader (data/folder.py): decoding with torchvision.io and the PIL fallback, the
standard transforms and their sizes, normalisation, seeded repeats, and the DataLoader workers rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_image_folder
from mncli.data import folder, load_data
from mncli.data.augment import Augment
from mncli.data.datasets import MEAN_STD
from mncli.errors import BadInput

RNG = np.random.default_rng(0)
PIXELS = RNG.integers(0, 256, (30, 40, 3), dtype=np.uint8)


def _pil_rgb(path) -> torch.Tensor:
    with Image.open(path) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)


def _no_pil(monkeypatch):
    def refuse(path):
        raise AssertionError(f"PIL was asked to decode {path}")

    monkeypatch.setattr(folder, "_read_with_pil", refuse)


# ---------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    "name, mode, kwargs",
    [
        ("rgb.jpg", "RGB", {"quality": 95}),
        ("grey.jpg", "L", {}),
        ("cmyk.jpg", "CMYK", {}),
        ("palette.png", "P", {}),
        ("alpha.png", "RGBA", {}),
    ],
)
def test_torchvision_decodes_jpeg_and_png_variants_as_pil_does(tmp_path, monkeypatch, name, mode, kwargs):
    path = tmp_path / name
    Image.fromarray(PIXELS).convert(mode).save(path, **kwargs)
    _no_pil(monkeypatch)
    image = folder.read_image(str(path))
    assert image.dtype == torch.uint8 and image.shape == (3, 30, 40)
    assert torch.equal(image, _pil_rgb(path))


def test_a_16_bit_png_is_scaled_to_8_bits(tmp_path, monkeypatch):
    path = tmp_path / "deep.png"
    Image.fromarray(PIXELS[..., 0].astype(np.uint16) * 257).save(path)  # k * 257 is k in 8 bits
    _no_pil(monkeypatch)
    image = folder.read_image(str(path))
    assert image.dtype == torch.uint8
    assert torch.equal(image[0], torch.from_numpy(PIXELS[..., 0].copy()))


@pytest.mark.parametrize("name", ["image.bmp", "image.tiff", "image.ppm"])
def test_formats_torchvision_cannot_read_go_to_pil(tmp_path, name):
    path = tmp_path / name
    Image.fromarray(PIXELS).save(path)
    assert torch.equal(folder.read_image(str(path)), torch.from_numpy(PIXELS).permute(2, 0, 1))


def test_a_file_torchvision_refuses_falls_back_to_pil(tmp_path):
    path = tmp_path / "really_a_bmp.jpg"  # torchvision.io reads by content: no BMP decoder
    Image.fromarray(PIXELS).save(path, format="BMP")
    assert folder._read_with_torchvision(str(path)) is None
    assert torch.equal(folder.read_image(str(path)), torch.from_numpy(PIXELS).permute(2, 0, 1))


def test_a_file_neither_can_read_is_one_line_of_bad_input(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"not an image")
    with pytest.raises(BadInput, match=r"cannot decode .*broken\.jpg: not an image") as caught:
        folder.read_image(str(path))
    assert "\n" not in caught.value.message


# ---------------------------------------------------------------- transforms


@pytest.mark.parametrize("size, resize", [(224, 256), (240, 274), (256, 293), (72, 82)])
def test_eval_transform_resizes_to_size_over_0_875_then_crops(size, resize):
    assert folder.eval_resize(size) == resize
    steps = folder.image_transform(size, Augment(crop=1, flip=True), train=False).transforms
    assert [type(s).__name__ for s in steps] == ["Resize", "CenterCrop"]
    assert steps[0].size == [resize] and list(steps[1].size) == [size, size]
    assert folder.describe_transforms(size, Augment(crop=1, flip=True)) == {
        "train": f"random-resized-crop {size} + flip",
        "eval": f"resize {resize} + centre crop {size}",
    }


def test_train_transform_is_random_resized_crop_and_flip():
    steps = folder.image_transform(240, Augment(crop=1, flip=True), train=True).transforms
    assert [type(s).__name__ for s in steps] == ["RandomResizedCrop", "RandomHorizontalFlip"]
    assert list(steps[0].size) == [240, 240] and steps[0].scale == (0.08, 1.0)
    # without crop, training images get the evaluation's resize and centre crop (then the flip)
    steps = folder.image_transform(240, Augment(flip=True), train=True).transforms
    assert [type(s).__name__ for s in steps] == ["Resize", "CenterCrop", "RandomHorizontalFlip"]
    assert folder.describe_transforms(240, Augment(cutout=8))["train"] == (
        "resize 274 + centre crop 240 + cutout 8"
    )


def test_eval_transform_matches_torchvision_on_pil_images():
    """The tensor pipeline gives the images torchvision's PIL pipeline gives, up to resampling."""
    from torchvision import transforms as T

    smooth = np.asarray(Image.fromarray(PIXELS[:8, :10]).resize((400, 300), Image.BICUBIC))
    tensor = torch.from_numpy(smooth.copy()).permute(2, 0, 1)
    ours = folder.image_transform(224, Augment(), train=False)(tensor)
    reference = T.Compose([T.Resize(256), T.CenterCrop(224), T.PILToTensor()])(Image.fromarray(smooth))
    assert ours.shape == reference.shape == (3, 224, 224)
    assert (ours.float() - reference.float()).abs().mean() < 1.5  # grey levels


def test_normalise_is_torchvisions_to_dtype_and_normalize():
    from torchvision.transforms import v2

    images = torch.from_numpy(PIXELS.copy()).permute(2, 0, 1)[None].repeat(2, 1, 1, 1)
    mean, std = MEAN_STD["imagenet"]
    reference = v2.Normalize(mean, std)(v2.ToDtype(torch.float32, scale=True)(images))
    ours = folder.normalise(images, mean, std)
    assert ours.dtype == torch.float32 and torch.allclose(ours, reference, atol=1e-5)
    assert images.dtype == torch.uint8  # the input is left as it was


# ---------------------------------------------------------------- the splits


@pytest.fixture(scope="module")
def jpeg_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet-jpegs")
    return write_image_folder(root, ("cat", "dog"), {"train": 6, "val": 2}, seed=1)


def test_splits_read_at_the_image_size_with_seeded_crops(jpeg_tree, monkeypatch):
    monkeypatch.setenv("MNCLI_WORKERS", "0")
    data = load_data("imagenet", data_dir=jpeg_tree, val_size=2, image_size=24, batch_size=4)
    assert data.info["image_shape"] == [3, 24, 24] and data.info["eval_resize"] == 27
    assert data.info["transforms"] == {
        "train": "random-resized-crop 24 + flip",
        "eval": "resize 27 + centre crop 24",
    }
    x, y = next(data.train.batches(epoch=0, seed=0))
    again, _ = next(data.train.batches(epoch=0, seed=0))
    other, _ = next(data.train.batches(epoch=1, seed=0))
    assert x.shape == (4, 3, 24, 24) and x.dtype == torch.float32 and torch.equal(x, again)
    assert not torch.equal(x, other)
    # resuming at batch 1 gives the uninterrupted run's batch 1
    uninterrupted = list(data.train.batches(epoch=0, seed=0))
    resumed, _ = next(data.train.batches(epoch=0, seed=0, start=1))
    assert torch.equal(resumed, uninterrupted[1][0])
    test_x, test_y = next(iter(data.test))
    assert test_x.shape == (4, 3, 24, 24) and set(test_y.tolist()) <= {0, 1}
    assert abs(float(test_x.mean())) < 2.5  # normalised, not 0..255


def test_a_worker_process_reports_an_undecodable_file_in_one_line(jpeg_tree, tmp_path, monkeypatch):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(jpeg_tree, root)
    (root / "imagenet" / "val" / "cat" / "0.jpg").write_bytes(b"truncated")
    monkeypatch.setenv("MNCLI_WORKERS", "1")
    data = load_data("imagenet", data_dir=root, val_size=2, image_size=24, batch_size=4)
    assert data.test.workers == 1
    with pytest.raises(BadInput) as caught:
        list(data.test)
    assert caught.value.message.startswith("cannot decode ") and "0.jpg" in caught.value.message
    assert "\n" not in caught.value.message and "Traceback" not in caught.value.message


# ---------------------------------------------------------------- workers


@pytest.mark.parametrize(
    "cores, local_world, expected",
    [(2, None, 1), (1, None, 1), (16, None, 15), (64, None, 16), (16, "4", 3), (4, "8", 1), (32, "2", 15)],
)
def test_workers_scale_with_the_cores_shared_among_local_ranks(monkeypatch, cores, local_world, expected):
    monkeypatch.delenv("MNCLI_WORKERS", raising=False)
    monkeypatch.setattr(folder.os, "sched_getaffinity", lambda pid: set(range(cores)))
    if local_world is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world)
    assert folder.default_workers() == expected


@pytest.mark.parametrize("value, expected", [("0", 0), ("3", 3), (" 24 ", 24)])
def test_mncli_workers_overrides(monkeypatch, value, expected):
    monkeypatch.setenv("MNCLI_WORKERS", value)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert folder.default_workers() == expected


@pytest.mark.parametrize("value", ["-1", "many", "2.5"])
def test_a_bad_mncli_workers_is_bad_input(monkeypatch, value):
    monkeypatch.setenv("MNCLI_WORKERS", value)
    with pytest.raises(BadInput, match="MNCLI_WORKERS must be a whole number"):
        folder.default_workers()
