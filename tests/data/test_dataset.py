"""Torch dataset over the image cache."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from raypipe.data.cache import ImageCache
from raypipe.data.dataset import CachedImageDataset, build_transforms, normalise, to_model_input
from tests.conftest import write_grazpedwri


def _manifest(root: Path) -> pd.DataFrame:
    write_grazpedwri(root, n_patients=4, size=(96, 64))
    rows = [{"image_id": p.stem, "path": str(p), "text_boxes": ""}
            for p in sorted(root.glob("images_part*/*.png"))]
    return pd.DataFrame(rows)


@pytest.fixture
def cache(tmp_path: Path) -> ImageCache:
    return ImageCache.build_or_open(_manifest(tmp_path / "g"), "ab" * 32, 48, "off", tmp_path / "c", workers=1)


def test_uint8_samples_normalised_per_batch_as_one_image_is(cache: ImageCache) -> None:
    rows = np.array([5, 1, 2])
    ds = CachedImageDataset(cache, rows, np.array([1, 0, 1]), augment=0.0, train=True, seed=0)
    assert len(ds) == 3 and ds.transform is None
    x, y = ds[0]
    assert x.shape == (1, 48, 48) and x.dtype == torch.uint8  # a quarter of float32's bytes through IPC
    assert y.dtype == torch.int64 and int(y) == 1
    np.testing.assert_array_equal(x[0].numpy(), cache.get(5))
    batch = to_model_input(torch.stack([ds[i][0] for i in range(3)]))
    assert batch.dtype == torch.float32
    expected = (cache.get(5).astype(np.float32) / 255 - 0.5) / 0.25
    np.testing.assert_allclose(batch[0, 0].numpy(), expected, atol=1e-5)
    # training batches and predict's single images get bit-identical inputs
    for i, row in enumerate(rows):
        np.testing.assert_array_equal(batch[i].numpy(), normalise(cache.get(int(row))))
    assert float(batch.min()) >= -2.0 and float(batch.max()) <= 2.0


def test_train_augment_changes_pixels_eval_is_deterministic(cache: ImageCache) -> None:
    rows, labels = np.arange(len(cache)), np.zeros(len(cache), np.int64)
    train = CachedImageDataset(cache, rows, labels, augment=0.5, train=True, seed=1)
    evald = CachedImageDataset(cache, rows, labels, augment=0.5, train=False, seed=1)
    assert evald.transform is None
    plain = [evald[i][0] for i in range(len(cache))]
    assert all(torch.equal(a, evald[i][0]) for i, a in enumerate(plain))
    augmented = [train[i][0] for i in range(len(cache))]
    assert sum(not torch.equal(a, b) for a, b in zip(augmented, plain, strict=True)) >= len(cache) // 2
    for a in augmented:
        assert a.shape == (1, 48, 48) and torch.isfinite(a).all()


def test_augment_reproducible_per_seed_epoch_index(cache: ImageCache) -> None:
    rows, labels = np.arange(len(cache)), np.zeros(len(cache), np.int64)
    a = CachedImageDataset(cache, rows, labels, augment=1.0, train=True, seed=3)
    b = CachedImageDataset(cache, rows, labels, augment=1.0, train=True, seed=3)
    assert torch.equal(a[2][0], b[2][0]) and torch.equal(a[2][0], a[2][0])
    epoch1 = [b[(i, i, 1)][0] for i in range(len(cache))]
    assert any(not torch.equal(a[i][0], epoch1[i]) for i in range(len(cache)))


def test_dataloader_workers_and_pickle(cache: ImageCache) -> None:
    rows, labels = np.arange(len(cache)), np.arange(len(cache)) % 2
    ds = CachedImageDataset(cache, rows, labels, augment=0.5, train=True, seed=0)
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[1][0], ds[1][0])
    batches = list(DataLoader(ds, batch_size=4, num_workers=2))
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.shape == (len(cache), 1, 48, 48) and x.dtype == torch.uint8 and y.tolist() == labels.tolist()
    # workers reseed per sample, so their output equals the in-process output
    np.testing.assert_array_equal(x[1].numpy(), ds[1][0].numpy())


def test_build_transforms_validation() -> None:
    assert build_transforms(0.0, train=True) is None
    assert build_transforms(0.7, train=False) is None
    assert build_transforms(0.7, train=True) is not None
    with pytest.raises(ValueError):
        build_transforms(1.5, train=True)
    img = (np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8)
    out = build_transforms(1.0, train=True)(image=img)["image"]  # type: ignore[misc]
    assert out.shape == (32, 32) and out.dtype == np.uint8


def test_rejects_mismatched_rows_and_labels(cache: ImageCache) -> None:
    with pytest.raises(ValueError, match="equal-length"):
        CachedImageDataset(cache, np.arange(3), np.arange(2), 0.0, False, 0)
    with pytest.raises(ValueError, match="out of range"):
        CachedImageDataset(cache, np.array([0, 99]), np.array([0, 1]), 0.0, False, 0)


def test_an_image_drawn_twice_or_on_two_ranks_is_augmented_differently(cache: ImageCache) -> None:
    """Weighted sampling draws with replacement: each draw gets its own augmentation, as does each rank."""
    from raypipe.data.sampling import KeyedDraws

    rows, labels = np.arange(len(cache)), np.zeros(len(cache), np.int64)
    ds = CachedImageDataset(cache, rows, labels, augment=1.0, train=True, seed=0)
    twice = [ds[(3, draw, 0)][0] for draw in (0, 1, 2)]
    assert not torch.equal(twice[0], twice[1]) and not torch.equal(twice[1], twice[2])
    assert torch.equal(ds[(3, 1, 0)][0], twice[1])  # still reproducible

    class Repeat(list):  # a sampler that draws index 3 four times
        def set_epoch(self, epoch: int) -> None:
            pass

    draws = [list(KeyedDraws(Repeat([3, 3]), rank, 2)) for rank in (0, 1)]
    assert draws == [[(3, 0, 0), (3, 2, 0)], [(3, 1, 0), (3, 3, 0)]]  # every draw of the epoch has its own key
    tensors = [ds[item][0] for rank in draws for item in rank]
    assert all(not torch.equal(a, b) for i, a in enumerate(tensors) for b in tensors[i + 1:])


def test_persistent_loader_workers_see_each_new_epoch(cache: ImageCache) -> None:
    """Workers started once per run: the epoch reaches them through the sampler's keys, so epoch 2's
    batches are epoch 2's augmentations, the same as a fresh loader (or no worker at all) gives."""
    from torch.utils.data import SequentialSampler

    from raypipe.data.sampling import KeyedDraws

    class Ordered(SequentialSampler):
        def set_epoch(self, epoch: int) -> None:
            pass

    rows, labels = np.arange(len(cache)), np.zeros(len(cache), np.int64)
    ds = CachedImageDataset(cache, rows, labels, augment=1.0, train=True, seed=0)
    sampler = KeyedDraws(Ordered(range(len(cache))))
    loader = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=2, persistent_workers=True)
    epochs = []
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        epochs.append(torch.cat([x for x, _ in loader]))
    assert not torch.equal(epochs[0], epochs[1])
    for epoch, got in zip((1, 2), epochs, strict=True):
        in_process = torch.stack([ds[(i, i, epoch)][0] for i in range(len(cache))])
        assert torch.equal(got, in_process)
