"""Losses for the binary (one logit) and multi-class (age) models, built by name from the config.

Class imbalance is compensated exactly once: by the loss (``pos_weight``, per-class weights, binary
focal ``alpha``) only when ``cfg.sampler == "none"``; with a weighted sampler the batches are already
rebalanced and every class weight is neutral, focal alpha included. The seeds did both, and their
"focal alpha" scaled every sample alike. Binary focal here follows ``torchvision.ops.sigmoid_focal_loss``:
positives weighted by alpha, negatives by 1 - alpha.
All losses take raw logits and integer targets and reduce by the mean.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raypipe.config import TrainConfig
from raypipe.registry import Registry

_HALF = (torch.float16, torch.bfloat16)
LossBuilder = Callable[[TrainConfig, int, np.ndarray | None], nn.Module]
LOSSES: Registry[LossBuilder] = Registry("loss")


def _binary_inputs(logits: torch.Tensor, targets: torch.Tensor, smoothing: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten (B,1)/(B,) logits; turn int targets into (optionally smoothed) float targets."""
    if logits.dtype in _HALF:  # AMP: compute the loss in float32
        logits = logits.float()
    if logits.ndim == 2 and logits.shape[1] == 1:
        logits = logits[:, 0]
    if logits.ndim != 1 or logits.shape != targets.shape:
        raise ValueError(f"binary loss expects logits (B,1) or (B,) and targets (B,), "
                         f"got {tuple(logits.shape)} and {tuple(targets.shape)}")
    t = targets.to(logits.dtype)
    if smoothing > 0:
        t = t * (1.0 - smoothing) + 0.5 * smoothing
    return logits, t


class BinaryFocalLoss(nn.Module):
    """Sigmoid focal loss (torchvision semantics, mean); ``alpha < 0`` disables class weighting."""

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.alpha, self.gamma, self.label_smoothing = alpha, gamma, label_smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x, t = _binary_inputs(logits, targets, self.label_smoothing)
        p = torch.sigmoid(x)
        ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        p_t = p * t + (1 - p) * (1 - t)
        loss = ce * (1 - p_t) ** self.gamma
        if self.alpha >= 0:
            loss = loss * (self.alpha * t + (1 - self.alpha) * (1 - t))
        return loss.mean()


class BinaryBCELoss(nn.Module):
    """BCE with logits; ``pos_weight`` (n_neg / n_pos) only when no sampler rebalances."""

    pos_weight: torch.Tensor | None

    def __init__(self, pos_weight: float | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        self.register_buffer("pos_weight", None if pos_weight is None else torch.tensor([pos_weight]))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x, t = _binary_inputs(logits, targets, self.label_smoothing)
        pw = None if self.pos_weight is None else self.pos_weight.to(x.dtype)
        return F.binary_cross_entropy_with_logits(x, t, pos_weight=pw)


class SoftmaxFocalLoss(nn.Module):
    """Multi-class focal loss: ``alpha[y] * (1 - p_y) ** gamma * CE_smoothed``, mean over the batch.

    With gamma 0 and no alpha it equals ``F.cross_entropy(label_smoothing=...)``.
    """

    alpha: torch.Tensor | None

    def __init__(self, alpha: torch.Tensor | None = None, gamma: float = 2.0,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.gamma, self.label_smoothing = gamma, label_smoothing
        self.register_buffer("alpha", alpha)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.long()
        if logits.dtype in _HALF:  # AMP: compute the loss in float32
            logits = logits.float()
        logp = F.log_softmax(logits, dim=1)
        ce = F.cross_entropy(logits, targets, reduction="none", label_smoothing=self.label_smoothing)
        p_t = logp.gather(1, targets[:, None])[:, 0].exp()
        loss = ce * (1 - p_t) ** self.gamma
        if self.alpha is not None:
            loss = loss * self.alpha[targets]
        return loss.mean()


class CrossEntropy(nn.CrossEntropyLoss):
    """``nn.CrossEntropyLoss`` that accepts any integer target dtype."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return super().forward(logits, targets.long())


def _rebalance(cfg: TrainConfig, class_counts: np.ndarray | None) -> np.ndarray | None:
    """Counts to use for loss-side rebalancing, or None when the sampler already does it."""
    if cfg.sampler != "none" or class_counts is None:
        return None
    return np.maximum(np.asarray(class_counts, dtype=np.float64), 1.0)


def inverse_frequency(class_counts: np.ndarray) -> torch.Tensor:
    """Per-class weights 1/count normalised to mean 1, so the loss keeps its usual scale."""
    w = 1.0 / np.maximum(np.asarray(class_counts, dtype=np.float64), 1.0)
    return torch.tensor(w * len(w) / w.sum(), dtype=torch.float32)


def _require_binary(name: str, n_classes: int) -> None:
    if n_classes != 2:
        raise ValueError(f"loss {name!r} is binary-only, got n_classes={n_classes} (use 'ce' or 'focal')")


@LOSSES.register("focal")
def _focal(cfg: TrainConfig, n_classes: int, class_counts: np.ndarray | None) -> nn.Module:
    if n_classes == 2:  # alpha < 0: no class weighting, the sampler balances
        return BinaryFocalLoss(cfg.focal_alpha if cfg.sampler == "none" else -1.0, cfg.focal_gamma,
                               cfg.label_smoothing)
    counts = _rebalance(cfg, class_counts)
    alpha = None if counts is None else inverse_frequency(counts)
    return SoftmaxFocalLoss(alpha, cfg.focal_gamma, cfg.label_smoothing)


@LOSSES.register("bce")
def _bce(cfg: TrainConfig, n_classes: int, class_counts: np.ndarray | None) -> nn.Module:
    _require_binary("bce", n_classes)
    counts = _rebalance(cfg, class_counts)
    pos_weight = None
    if counts is not None:
        if len(counts) != 2:
            raise ValueError(f"bce needs 2 class counts, got {len(counts)}")
        pos_weight = float(counts[0] / counts[1])
    return BinaryBCELoss(pos_weight, cfg.label_smoothing)


@LOSSES.register("ce")
def _ce(cfg: TrainConfig, n_classes: int, class_counts: np.ndarray | None) -> nn.Module:
    if n_classes < 3:
        raise ValueError(f"loss 'ce' needs n_classes > 2, got {n_classes}: binary models have one "
                         f"logit, use 'bce' or 'focal'")
    counts = _rebalance(cfg, class_counts)
    weight = None if counts is None else inverse_frequency(counts)
    return CrossEntropy(weight=weight, label_smoothing=cfg.label_smoothing)


def build_loss(cfg: TrainConfig, n_classes: int, class_counts: np.ndarray | None = None) -> nn.Module:
    """The loss named by ``cfg.loss`` for a model with ``n_classes`` (2 = binary, one logit).

    ``class_counts[c]`` = training samples of class c; used only when ``cfg.sampler == "none"``.
    """
    if class_counts is not None and len(class_counts) != n_classes:
        raise ValueError(f"class_counts has {len(class_counts)} entries for {n_classes} classes")
    return LOSSES.get(cfg.loss)(cfg, n_classes, class_counts)
