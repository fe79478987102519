"""Validation metrics, one function per task type.

Binary (fracture) decisions use the Youden threshold (max sensitivity + specificity - 1)
chosen on the same predictions; promotion ships the Youden point of out-of-fold scores
(ship/selection.py) and applies it to the test set. Undefined metrics (one class only) are NaN, never a crash.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
    roc_curve,
)


def youden_threshold(y: np.ndarray, p: np.ndarray) -> float:
    if len(np.unique(y)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(y, p)
    best = int(np.argmax(tpr - fpr))
    return float(min(thr[best], 1.0))


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float | None = None) -> dict[str, float]:
    """Metrics of fracture probabilities ``p`` against labels ``y`` (0/1)."""
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=float)
    both = len(np.unique(y)) == 2
    thr = youden_threshold(y, p) if threshold is None else threshold
    pred = (p >= thr).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return {
        "auroc": float(roc_auc_score(y, p)) if both else float("nan"),
        "auprc": float(average_precision_score(y, p)) if both else float("nan"),
        "threshold": thr,
        "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
        "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        "f1": float(f1_score(y, pred, zero_division=0.0)),
        # The share of images called positive at this threshold.
        "positive_rate": float(pred.mean()) if len(y) else float("nan"),
    }


def multiclass_metrics(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 of class probabilities ``probs`` (N, C)."""
    y = np.asarray(y, dtype=int)
    pred = np.asarray(probs).argmax(axis=1)
    return {
        "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        "macro_f1": float(f1_score(y, pred, average="macro", labels=np.arange(probs.shape[1]), zero_division=0.0)),
    }


def confusion(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    return confusion_matrix(np.asarray(y, dtype=int), np.asarray(pred, dtype=int), labels=np.arange(n_classes))


def evaluate(y: np.ndarray, scores: np.ndarray, n_classes: int, threshold: float | None = None) -> dict[str, float]:
    """Binary scores are P(fracture) (N,); multi-class scores are probabilities (N, C)."""
    if n_classes == 2:
        return binary_metrics(y, scores, threshold)
    return multiclass_metrics(y, scores)


def predictions(scores: np.ndarray, n_classes: int, threshold: float = 0.5) -> np.ndarray:
    if n_classes == 2:
        return (np.asarray(scores) >= threshold).astype(int)
    return np.asarray(scores).argmax(axis=1)


def default_monitor(n_classes: int) -> str:
    return "val_auroc" if n_classes == 2 else "val_macro_f1"


def scores_from_logits(logits, n_classes: int) -> np.ndarray:
    """A model's logits (a torch tensor) -> scores: P(positive) per image for a binary model (one logit,
    sigmoid), a row of class probabilities otherwise (softmax). The one place this is decided."""
    import torch

    logits = logits.detach().float().cpu()
    return (torch.sigmoid(logits.reshape(-1)) if n_classes == 2 else torch.softmax(logits, dim=1)).numpy()
