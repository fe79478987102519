"""Pictures people would rather look at than read: confusion matrices, ROC / PR curves, reliability
diagrams and subgroup forest plots."""

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


def subgroup_png(groups: dict[str, dict], metric: str, path: Path, title: str, overall: float | None = None
                 ) -> Path | None:
    """Forest plot: ``metric`` with its 95% CI per subgroup (``evaluate.clinical.subgroups`` rows);
    groups too small to score are named with their count. None when no group could be scored."""
    names = list(groups)
    if not any(metric in row for row in groups.values()):
        return None
    fig, ax = plt.subplots(figsize=(5.5, 0.45 * len(names) + 1.4))
    for i, name in enumerate(names):
        row = groups[name]
        if metric in row and not np.isnan(row[metric]):
            low, high = row.get("ci95", (row[metric], row[metric]))
            ax.errorbar(row[metric], i, xerr=[[row[metric] - low], [high - row[metric]]], fmt="o", color="tab:blue",
                        capsize=3)
        else:
            ax.text(0.02, i, "too few images to score", va="center", color="grey", fontsize=8)
    if overall is not None and not np.isnan(overall):
        ax.axvline(overall, ls="--", color="grey", lw=1, label=f"all: {overall:.3f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(range(len(names)), [f"{n} (n={groups[n]['n']})" for n in names])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"{metric} (95% CI, patient bootstrap)")
    ax.set_title(title)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
