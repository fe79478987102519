"""Class-rebalancing samplers that are safe under DDP and Ray Train.

``ray.train.torch.prepare_data_loader`` silently replaces any sampler that is not a
``DistributedSampler`` (e.g. ``WeightedRandomSampler``) with a plain one, and the seeds' DDP ran
without any distributed sampler, so every rank walked the whole epoch. The weighted sampler here
therefore subclasses ``DistributedSampler``: Ray keeps it, each rank draws only its own share, and
``set_epoch`` (which the training loop must call every epoch) changes the draw.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sized

import numpy as np
import torch
from torch.utils.data import Sampler
from torch.utils.data.distributed import DistributedSampler

from raypipe.config import TrainConfig
from raypipe.registry import Registry

SamplerBuilder = Callable[[TrainConfig, np.ndarray, int, int, bool], Sampler[int]]
SAMPLERS: Registry[SamplerBuilder] = Registry("sampler")

_MAX_CATEGORIES = 2**24  # torch.multinomial limit


def _as_labels(labels: np.ndarray) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or len(arr) == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0:
        raise ValueError("labels must be non-negative integer class ids")
    return arr


def class_weights(labels: np.ndarray, power: float) -> np.ndarray:
    """Per-sample weight ``(1 / count[label]) ** power``.

    Class c is then drawn with probability proportional to ``count_c ** (1 - power)``:
    power 0 keeps the natural frequencies, power 1 draws every class equally often.
    """
    labels = _as_labels(labels)
    counts = np.bincount(labels).astype(np.float64)
    return (1.0 / counts[labels]) ** power


class WeightedDistributedSampler(DistributedSampler):
    """Per-rank weighted draw with replacement: ``ceil(len / num_replicas)`` indices per rank and epoch.

    The generator is seeded from (seed, epoch, rank), so ranks draw different indices, ``set_epoch``
    gives a new draw and a rerun reproduces it. ``num_replicas=1`` serves the in-process path.
    ``dataset`` only needs ``len``; by default the labels themselves stand in for it.
    """

    def __init__(self, labels: np.ndarray, num_replicas: int = 1, rank: int = 0, power: float = 1.0,
                 seed: int = 0, dataset: Sized | None = None) -> None:
        labels = _as_labels(labels)
        if dataset is not None and len(dataset) != len(labels):
            raise ValueError(f"dataset has {len(dataset)} items but {len(labels)} labels were given")
        if len(labels) > _MAX_CATEGORIES:
            raise ValueError(f"weighted sampling supports at most {_MAX_CATEGORIES} samples")
        # shuffle=True, drop_last=False: num_samples = ceil(len / num_replicas) as in DistributedSampler
        super().__init__(dataset if dataset is not None else labels, num_replicas=num_replicas,
                         rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.power = power
        self.weights = torch.as_tensor(class_weights(labels, power), dtype=torch.float64)

    def _generator(self) -> torch.Generator:
        # SeedSequence mixes the three numbers: (seed, epoch, rank) tuples never collide trivially.
        state = np.random.SeedSequence([self.seed, self.epoch, self.rank]).generate_state(1, np.uint64)
        g = torch.Generator()
        g.manual_seed(int(state[0]))
        return g

    def __iter__(self) -> Iterator[int]:
        idx = torch.multinomial(self.weights, self.num_samples, replacement=True,
                                generator=self._generator())
        return iter(idx.tolist())

    def __len__(self) -> int:
        return self.num_samples


@SAMPLERS.register("none")
def _plain(cfg: TrainConfig, labels: np.ndarray, rank: int, world_size: int,
           shuffle: bool) -> Sampler[int]:
    return DistributedSampler(_as_labels(labels), num_replicas=world_size, rank=rank,
                              shuffle=shuffle, seed=cfg.seed)


@SAMPLERS.register("weighted")
def _weighted(cfg: TrainConfig, labels: np.ndarray, rank: int, world_size: int,
              shuffle: bool) -> Sampler[int]:
    if not shuffle:  # evaluation passes see every sample once, in order; never a weighted draw
        return _plain(cfg, labels, rank, world_size, shuffle)
    return WeightedDistributedSampler(labels, num_replicas=world_size, rank=rank,
                                      power=cfg.sampler_power, seed=cfg.seed)


class KeyedDraws(Sampler[tuple[int, int, int]]):
    """``(index, draw, epoch)`` keys from a rank's sampler, where ``draw`` numbers the draws of the whole
    epoch across ranks (position x world + rank). The dataset keys its augmentation by the draw and the
    epoch, not the index: an image a weighted sampler draws three times in an epoch is augmented three
    ways, two ranks never produce the same tensor, and loader workers that live across epochs need no
    message about the epoch (it comes with every key)."""

    def __init__(self, sampler: DistributedSampler, rank: int = 0, world_size: int = 1) -> None:
        self.sampler, self.rank, self.world_size = sampler, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        for position, index in enumerate(self.sampler):
            yield int(index), position * self.world_size + self.rank, self.epoch

    def __len__(self) -> int:
        return len(self.sampler)


def build_sampler(cfg: TrainConfig, labels: np.ndarray, rank: int = 0, world_size: int = 1,
                  shuffle: bool = True) -> Sampler[int]:
    """The sampler named by ``cfg.sampler`` for this rank (always a ``DistributedSampler``).

    ``labels[i]`` is the class of dataset item i. ``shuffle=False`` (evaluation) always gives the
    plain ordered ``DistributedSampler``, whatever ``cfg.sampler`` says. Call ``set_epoch(epoch)``
    on the result at the start of every epoch.
    """
    return SAMPLERS.get(cfg.sampler)(cfg, labels, rank, world_size, shuffle)
