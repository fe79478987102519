"""Losses: torchvision focal semantics, imbalance compensated once, CE equivalence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from raypipe.config import TrainConfig
from raypipe.models.losses import (
    LOSSES,
    BinaryBCELoss,
    BinaryFocalLoss,
    SoftmaxFocalLoss,
    build_loss,
    inverse_frequency,
)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.5, 0.0), (0.75, 3.0), (-1.0, 2.0), (0.1, 1.5)])
def test_binary_focal_matches_torchvision(alpha: float, gamma: float) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 1, generator=g) * 3
    targets = torch.randint(0, 2, (64,), generator=g)
    loss = build_loss(TrainConfig(loss="focal", focal_alpha=alpha, focal_gamma=gamma), 2, None)
    expected = sigmoid_focal_loss(logits[:, 0], targets.float(), alpha=alpha, gamma=gamma, reduction="mean")
    assert torch.allclose(loss(logits, targets), expected, atol=1e-6)
    assert torch.allclose(loss(logits[:, 0], targets), expected, atol=1e-6)  # (B,) logits too


def test_focal_alpha_weights_positives_alpha_negatives_one_minus_alpha() -> None:
    loss = BinaryFocalLoss(alpha=0.25, gamma=0.0)
    x = torch.tensor([0.3])
    bce_pos = F.binary_cross_entropy_with_logits(x, torch.ones(1))
    bce_neg = F.binary_cross_entropy_with_logits(x, torch.zeros(1))
    assert torch.allclose(loss(x, torch.tensor([1])), 0.25 * bce_pos)
    assert torch.allclose(loss(x, torch.tensor([0])), 0.75 * bce_neg)
    # a mixed batch is the mean of the per-sample weighted terms, not a uniform 0.25 scale
    both = loss(torch.tensor([0.3, 0.3]), torch.tensor([1, 0]))
    assert torch.allclose(both, (0.25 * bce_pos + 0.75 * bce_neg) / 2)


def test_binary_focal_label_smoothing_softens_targets() -> None:
    x, t = torch.tensor([[2.0], [-1.0]]), torch.tensor([1, 0])
    smoothed = build_loss(TrainConfig(loss="focal", label_smoothing=0.2), 2, None)(x, t)
    soft = torch.tensor([0.9, 0.1])
    assert torch.allclose(smoothed, sigmoid_focal_loss(x[:, 0], soft, alpha=0.25, gamma=2.0, reduction="mean"))


def test_bce_pos_weight_only_without_sampler() -> None:
    counts = np.array([90, 10])
    plain = build_loss(TrainConfig(loss="bce", sampler="none"), 2, counts)
    assert isinstance(plain, BinaryBCELoss) and plain.pos_weight is not None
    assert plain.pos_weight.item() == pytest.approx(9.0)
    x, t = torch.tensor([[0.5], [-0.2]]), torch.tensor([1, 0])
    expected = F.binary_cross_entropy_with_logits(x[:, 0], t.float(), pos_weight=torch.tensor([9.0]))
    assert torch.allclose(plain(x, t), expected)

    weighted = build_loss(TrainConfig(loss="bce", sampler="weighted"), 2, counts)
    assert weighted.pos_weight is None
    assert torch.allclose(weighted(x, t), F.binary_cross_entropy_with_logits(x[:, 0], t.float()))
    assert build_loss(TrainConfig(loss="bce"), 2, None).pos_weight is None


def test_bce_label_smoothing() -> None:
    x, t = torch.tensor([1.0, -2.0]), torch.tensor([1, 0])
    loss = build_loss(TrainConfig(loss="bce", label_smoothing=0.1), 2, None)
    expected = F.binary_cross_entropy_with_logits(x, torch.tensor([0.95, 0.05]))
    assert torch.allclose(loss(x, t), expected)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_multiclass_focal_gamma0_equals_cross_entropy(smoothing: float) -> None:
    g = torch.Generator().manual_seed(1)
    logits, targets = torch.randn(32, 4, generator=g), torch.randint(0, 4, (32,), generator=g)
    loss = build_loss(TrainConfig(loss="focal", focal_gamma=0.0, label_smoothing=smoothing), 4, None)
    assert isinstance(loss, SoftmaxFocalLoss) and loss.alpha is None
    expected = F.cross_entropy(logits, targets, label_smoothing=smoothing)
    assert torch.allclose(loss(logits, targets), expected, atol=1e-6)


def test_multiclass_focal_down_weights_easy_samples() -> None:
    logits, targets = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.2, 0.0]]), torch.tensor([0, 1])
    ce = F.cross_entropy(logits, targets, reduction="none")
    p = F.softmax(logits, 1)[torch.arange(2), targets]
    expected = (ce * (1 - p) ** 2).mean()
    assert torch.allclose(SoftmaxFocalLoss(gamma=2.0)(logits, targets), expected)


def test_multiclass_alpha_and_weights_only_without_sampler() -> None:
    counts = np.array([100, 50, 25, 25])
    focal = build_loss(TrainConfig(loss="focal", sampler="none"), 4, counts)
    assert focal.alpha is not None and torch.allclose(focal.alpha, inverse_frequency(counts))
    assert focal.alpha.mean().item() == pytest.approx(1.0)
    assert focal.alpha[2] == pytest.approx(4 * focal.alpha[0].item())
    assert build_loss(TrainConfig(loss="focal", sampler="weighted"), 4, counts).alpha is None

    ce = build_loss(TrainConfig(loss="ce", sampler="none", label_smoothing=0.1), 4, counts)
    assert ce.weight is not None and ce.label_smoothing == 0.1
    assert build_loss(TrainConfig(loss="ce", sampler="weighted"), 4, counts).weight is None
    logits, targets = torch.randn(8, 4), torch.randint(0, 4, (8,), dtype=torch.int32)
    expected = F.cross_entropy(logits, targets.long(), weight=inverse_frequency(counts), label_smoothing=0.1)
    assert torch.allclose(ce(logits, targets), expected)


def test_wrong_loss_for_task_and_unknown_name() -> None:
    with pytest.raises(ValueError, match="binary-only"):
        build_loss(TrainConfig(loss="bce"), 4, None)
    with pytest.raises(ValueError, match="n_classes > 2"):
        build_loss(TrainConfig(loss="ce"), 2, None)
    with pytest.raises(ValueError, match=r"unknown loss 'hinge'; known: bce, ce, focal"):
        build_loss(TrainConfig(loss="hinge"), 2, None)
    with pytest.raises(ValueError, match="class_counts"):
        build_loss(TrainConfig(loss="focal"), 4, np.array([1, 2]))
    assert LOSSES.names() == ["bce", "ce", "focal"]


def test_binary_shape_mismatch_is_clear() -> None:
    with pytest.raises(ValueError, match="binary loss expects"):
        BinaryFocalLoss()(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))


def test_half_precision_logits_give_float32_loss() -> None:
    t = torch.tensor([1, 0])
    assert BinaryFocalLoss()(torch.tensor([0.5, -0.5], dtype=torch.bfloat16), t).dtype == torch.float32
    assert SoftmaxFocalLoss()(torch.randn(2, 3).bfloat16(), t).dtype == torch.float32


def test_focal_alpha_is_neutral_with_a_weighted_sampler() -> None:
    """The sampler already balances the batches: alpha would compensate the imbalance a second time."""
    x, t = torch.tensor([[1.5], [-0.3], [0.2]]), torch.tensor([1, 0, 0])
    plain = build_loss(TrainConfig(loss="focal", focal_alpha=0.8, sampler="none"), 2, np.array([9, 1]))
    weighted = build_loss(TrainConfig(loss="focal", focal_alpha=0.8, sampler="weighted"), 2, np.array([9, 1]))
    assert plain.alpha == 0.8 and weighted.alpha < 0
    unweighted = sigmoid_focal_loss(x[:, 0], t.float(), alpha=-1, gamma=2.0, reduction="mean")
    assert torch.allclose(weighted(x, t), unweighted)
    assert not torch.allclose(plain(x, t), unweighted)
