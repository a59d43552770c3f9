"""Batch augmentation: shapes, what each op does, and that it is a pure function of (seed, epoch, batch)."""

import pytest
import torch

from mncli.data import Augment, load_data, parse_augment
from mncli.data.augment import cutout, random_crop, random_flip
from mncli.errors import BadInput


def test_crop_is_a_shifted_window_of_the_padded_image():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6) + 1
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, r : r + 6, c : c + 6] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_flip_mirrors_about_half_the_batch():
    x = torch.randn(400, 1, 4, 5)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, xi.flip(2)) for o, xi in zip(out, x, strict=True)]
    kept = [torch.equal(o, xi) for o, xi in zip(out, x, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 120 < sum(flipped) < 280


def test_cutout_zeroes_at_most_a_square():
    x = torch.ones(50, 2, 10, 10)
    out = cutout(x, 4, torch.Generator().manual_seed(0))
    zeros = (out == 0).sum(dim=(2, 3))
    assert zeros.max() <= 2 * 16 and zeros.sum() > 0
    assert torch.equal(zeros[:, 0], zeros[:, 1])  # same hole in every channel


def test_training_batches_repeat_for_the_same_seed_epoch_and_batch():
    data = load_data("synthetic:train=300", augment=Augment(crop=2, flip=True, cutout=4), batch_size=32)
    first = list(data.train.batches(epoch=1, seed=5))
    again = list(data.train.batches(epoch=1, seed=5))
    resumed = list(data.train.batches(epoch=1, seed=5, start=3))
    other_epoch = list(data.train.batches(epoch=2, seed=5))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again, strict=True))
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first[3:], resumed, strict=True)
    )
    assert not torch.equal(first[0][1], other_epoch[0][1])


def test_eval_batches_are_in_order_and_not_augmented():
    data = load_data("synthetic:train=100", augment=Augment(crop=2, flip=True), batch_size=30)
    labels = torch.cat([y for _, y in data.val])
    assert torch.equal(labels, data.val.labels)


def test_ddp_shares_are_disjoint_and_equal():
    from mncli.data.splits import epoch_order

    shares = [set(epoch_order(99, seed=3, epoch=2, rank=r, world_size=2).tolist()) for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 49 and not shares[0] & shares[1]
    data = load_data("synthetic:train=110", batch_size=8)
    ranks = [torch.cat([y for _, y in data.train.batches(epoch=0, rank=r, world_size=2)]) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(data.train) // 2


def test_parse_augment():
    default = Augment(crop=4, flip=True)
    assert parse_augment(None, default) == default
    assert parse_augment("none", default) == Augment()
    assert parse_augment("crop=2,cutout=8", default) == Augment(crop=2, cutout=8)
    with pytest.raises(BadInput):
        parse_augment("rotate=10", default)
