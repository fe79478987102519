"""Pictures people would rather look at than read: confusion matrices and ROC curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402


def confusion_png(cm: np.ndarray, class_names: list[str], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 2.5, 1.1 * len(class_names) + 2))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=30, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    peak = cm.max() if cm.size else 0
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > peak / 2 else "black")
    return _save(fig, path)


def roc_png(y: np.ndarray, p: np.ndarray, path: Path, title: str, threshold: float | None = None) -> Path | None:
    """ROC curve with the operating point; None when only one class is present."""
    if len(np.unique(y)) < 2:
        return None
    fpr, tpr, thr = roc_curve(y, p)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, lw=2, label=f"AUROC {roc_auc_score(y, p):.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    if threshold is not None:
        k = int(np.argmin(np.abs(thr - threshold)))
        ax.plot(fpr[k], tpr[k], "o", color="crimson", label=f"threshold {threshold:.2f}")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title)
    ax.legend(loc="lower right")
    return _save(fig, path)


def pr_png(y: np.ndarray, p: np.ndarray, path: Path, title: str) -> Path | None:
    """Precision-recall curve with the prevalence line; None when only one class is present."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    if len(np.unique(y)) < 2:
        return None
    precision, recall, _ = precision_recall_curve(y, p)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(recall, precision, lw=2, label=f"AUPRC {average_precision_score(y, p):.3f}")
    ax.axhline(float(np.mean(y)), ls="--", color="grey", lw=1, label="prevalence")
    ax.set_xlabel("recall (sensitivity)")
    ax.set_ylabel("precision (PPV)")
    ax.set_title(title)
    ax.legend(loc="lower left")
    return _save(fig, path)


def reliability_png(bins: list[dict], ece: float, path: Path, title: str) -> Path:
    """Reliability diagram from ``evaluate.clinical.calibration`` bins (dot size = images in the bin)."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    if bins:
        ax.scatter([b["mean_predicted"] for b in bins], [b["observed_rate"] for b in bins],
                   s=[20 + 4 * b["n"] for b in bins], color="tab:blue", label=f"ECE {ece:.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed fracture rate")
    ax.set_title(title)
    ax.legend(loc="upper left")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
