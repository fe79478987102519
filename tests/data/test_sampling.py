"""Samplers: per-rank weighted draws with the right class frequencies, kept by Ray's loader prep."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, WeightedRandomSampler

from raypipe.config import TrainConfig
from raypipe.data.sampling import SAMPLERS, WeightedDistributedSampler, build_sampler
from raypipe.registry import Registry

N0, N1 = 18_000, 2_000  # 90 % / 10 %
LABELS = np.array([0] * N0 + [1] * N1)


@pytest.mark.parametrize("power", [0.0, 0.5, 1.0])
def test_class_frequencies_per_rank(power: float) -> None:
    counts = np.array([N0, N1], dtype=float)
    expected = counts ** (1 - power) / (counts ** (1 - power)).sum()  # p=0: .1, p=.5: .25, p=1: .5
    for rank in range(2):
        s = build_sampler(TrainConfig(sampler="weighted", sampler_power=power, seed=3), LABELS, rank, 2)
        idx = np.fromiter(iter(s), dtype=np.int64)
        assert len(idx) == len(s) == 10_000  # ceil(20_000 / 2) per rank
        freq1 = LABELS[idx].mean()
        assert freq1 == pytest.approx(expected[1], abs=0.02), (rank, power, freq1)


def test_ranks_epochs_and_seeds() -> None:
    def draw(rank: int, epoch: int, seed: int = 0) -> list[int]:
        s = WeightedDistributedSampler(LABELS, num_replicas=2, rank=rank, power=1.0, seed=seed)
        s.set_epoch(epoch)
        return list(s)

    assert draw(0, 0) != draw(1, 0)
    assert draw(0, 0) != draw(0, 1)
    assert draw(0, 0) != draw(0, 0, seed=1)
    assert draw(1, 2) == draw(1, 2)


def test_single_replica_and_odd_length() -> None:
    labels = np.array([0, 0, 0, 1, 1])
    one = WeightedDistributedSampler(labels)
    assert len(list(one)) == len(one) == 5
    for rank in range(2):
        s = WeightedDistributedSampler(labels, num_replicas=2, rank=rank)
        assert len(list(s)) == 3 and all(0 <= i < 5 for i in s)


def test_is_distributed_sampler_and_plain_variant() -> None:
    assert isinstance(WeightedDistributedSampler(LABELS), DistributedSampler)
    plain = build_sampler(TrainConfig(sampler="none"), LABELS, rank=1, world_size=2)
    assert type(plain) is DistributedSampler and plain.shuffle and len(plain) == 10_000
    assert plain.rank == 1 and plain.num_replicas == 2
    # evaluation (shuffle=False) is an ordered pass even when training uses a weighted sampler
    evaluation = build_sampler(TrainConfig(sampler="weighted"), LABELS, rank=0, world_size=1, shuffle=False)
    assert type(evaluation) is DistributedSampler and list(evaluation) == list(range(len(LABELS)))


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="unknown sampler 'smote'; known: none, weighted"):
        build_sampler(TrainConfig(sampler="smote"), LABELS, 0, 1)
    with pytest.raises(ValueError, match="integer"):
        WeightedDistributedSampler(np.array([0.5, 1.0]))
    with pytest.raises(ValueError):
        WeightedDistributedSampler(LABELS, num_replicas=2, rank=2)
    assert isinstance(SAMPLERS, Registry)


def test_survives_ray_prepare_data_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run Ray Train's real ``prepare_data_loader`` with a faked 2-worker context (no Ray started)."""
    ray_train = pytest.importorskip("ray.train")
    import ray.train.torch as ray_torch

    class FakeContext:
        def get_world_size(self) -> int:
            return 2

        def get_world_rank(self) -> int:
            return 0

    monkeypatch.setattr(ray_train, "get_context", lambda: FakeContext())
    # a replacement DistributedSampler would ask torch.distributed for the world (no process group)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a, **k: 2)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda *a, **k: 0)
    dataset = list(range(len(LABELS)))

    ours = WeightedDistributedSampler(LABELS, num_replicas=2, rank=0)
    prepared = ray_torch.prepare_data_loader(DataLoader(dataset, batch_size=8, sampler=ours),
                                             move_to_device=False)
    assert prepared.sampler is ours

    # control: the harness does detect Ray's silent replacement of a non-distributed sampler
    foreign = WeightedRandomSampler([1.0] * len(LABELS), len(LABELS))
    prepared = ray_torch.prepare_data_loader(DataLoader(dataset, batch_size=8, sampler=foreign),
                                             move_to_device=False)
    assert prepared.sampler is not foreign and type(prepared.sampler) is DistributedSampler
