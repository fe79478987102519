"""Torch dataset over the decoded image cache, with strength-scaled augmentation.

``__getitem__`` runs for every sample every epoch, so it does only: one memmap row read and the
(optional) augmentation on a small uint8 image. All decoding happened once, in the cache. Samples
leave the loader workers as uint8 (a quarter of float32's bytes through worker IPC and collation);
``to_model_input`` normalises the whole batch where the model runs (on a GPU, for free).

Augmentation (albumentations 2.0.8, the last MIT release) is scaled by one strength ``augment``
in [0, 1] so a tuner searches a single number instead of five:

* HorizontalFlip p=0.5 (deliberate: left and right wrists are mirror images; fracture signs do
  not depend on laterality, and the data set has both sides, so flipping adds valid variety)
* Affine: rotate up to 15*s deg, scale 1 +/- 0.15*s, translate up to 6*s % (padding 0 = the
  letterbox colour)
* RandomBrightnessContrast: limits 0.2*s (exposure differs between devices)
* GaussNoise: small (std up to 4*s % of full range)
* CLAHE: p = 0.3*s (some PACS exports are contrast enhanced)

Randomness is reseeded per sample from (seed, epoch, draw): runs are reproducible, and forked
DataLoader workers do not repeat each other's augmentations (a classic bug when a transform is
seeded once and then copied into every worker). The training loop indexes the dataset with
``(index, draw, epoch)`` keys (``sampling.KeyedDraws``): an image drawn several times in an epoch
(weighted sampling) or on several DDP ranks is augmented differently each time, and the epoch travels
with the key, so persistent loader workers (started once per run, not per epoch) see every new epoch.
"""

from __future__ import annotations

import random

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from raypipe.data.cache import ImageCache

MEAN, STD = 0.5, 0.25
_SCALE = np.float32(1.0 / (255.0 * STD))
_SHIFT = np.float32(MEAN / STD)


def build_transforms(augment: float, train: bool) -> A.Compose | None:
    """The augmentation pipeline for strength ``augment`` in [0, 1]; None when there is none.

    Input and output: a 2-D uint8 image. Separate from the dataset so benchmarks can reuse it.
    """
    if not 0.0 <= augment <= 1.0:
        raise ValueError(f"augment strength must be in [0, 1], got {augment}")
    if not train or augment == 0.0:
        return None
    s = float(augment)
    return A.Compose([
        A.HorizontalFlip(p=0.5),
        A.Affine(rotate=(-15 * s, 15 * s), scale=(1 - 0.15 * s, 1 + 0.15 * s),
                 translate_percent=(-0.06 * s, 0.06 * s), border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.8),
        A.RandomBrightnessContrast(brightness_limit=0.2 * s, contrast_limit=0.2 * s, p=0.5),
        A.GaussNoise(std_range=(0.0, 0.04 * s), p=0.3),
        A.CLAHE(clip_limit=(1.0, 1.0 + 2.0 * s), tile_grid_size=(8, 8), p=0.3 * s),
    ])


def normalise(img: np.ndarray) -> np.ndarray:
    """uint8 (S, S) -> float32 (1, S, S) as ``(x/255 - 0.5) / 0.25``, in one pass: one image (predict)."""
    out = img.astype(np.float32)
    out *= _SCALE
    out -= _SHIFT
    return out[None]


def to_model_input(batch: torch.Tensor) -> torch.Tensor:
    """uint8 batch (B, 1, S, S), already on the model's device -> float32, normalised exactly as
    ``normalise`` (the same two float32 operations, so the same numbers)."""
    return batch.float().mul_(float(_SCALE)).sub_(float(_SHIFT))


class CachedImageDataset(Dataset):
    """``(image uint8 (1,S,S), label int64)`` for the cache rows of one split.

    ``rows`` are cache row positions (``cache.rows(split_ids)``), ``labels`` the matching targets.
    Index with a position (no augmentation key: epoch 0, draw = position) or an ``(index, draw, epoch)``
    key. Pickles cheaply (the cache drops its memmap), so it works with DataLoader workers and Ray.
    """

    def __init__(self, cache: ImageCache, rows: np.ndarray, labels: np.ndarray, augment: float,
                 train: bool, seed: int = 0) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        if rows.shape != labels.shape or rows.ndim != 1:
            raise ValueError(f"rows {rows.shape} and labels {labels.shape} must be equal-length 1-D arrays")
        if len(rows) and (rows.min() < 0 or rows.max() >= len(cache)):
            raise ValueError(f"rows out of range for a cache of {len(cache)} images")
        self.cache = cache
        self.rows = rows
        self.labels = labels
        self.train = train
        self.seed = int(seed)
        self.transform = build_transforms(augment, train)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int | tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, draw, epoch = item if isinstance(item, tuple) else (item, item, 0)
        img = self.cache.get(int(self.rows[index]))
        if self.transform is not None:
            key = (self.seed, int(epoch), int(draw))
            self.transform.set_random_state(np.random.default_rng(key), random.Random(hash(key)))
            img = self.transform(image=np.ascontiguousarray(img))["image"]
        if not (img.flags.writeable and img.flags.c_contiguous):  # the memmap row itself, or a flipped view
            img = np.array(img, copy=True)
        return torch.from_numpy(img[None]), torch.tensor(self.labels[index], dtype=torch.int64)
