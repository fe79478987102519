"""Test-set evaluation the way a clinical study reports it.

Binary (fracture) models: AUROC and AUPRC with bootstrap 95% CIs, sensitivity / specificity / F1 at
the shipped threshold (the Youden point of out-of-fold scores, never re-tuned on test), calibration (ECE + reliability bins).
Multi-class (age) models: accuracy and macro-F1 with CIs, and the confusion matrix.

The bootstrap resamples *patients*, not images: one patient's AP and lateral views and follow-up
studies are correlated, and resampling them apart would make the intervals too narrow.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from raypipe.train.metrics import binary_metrics, confusion, multiclass_metrics, predictions

CI_METRICS = {2: ("auroc", "auprc", "sensitivity", "specificity", "f1"), 0: ("accuracy", "macro_f1")}


def point_metrics(y: np.ndarray, scores: np.ndarray, n_classes: int, threshold: float = 0.5) -> dict[str, float]:
    if n_classes == 2:
        return binary_metrics(y, scores, threshold)
    return multiclass_metrics(y, scores)


def bootstrap_ci(y: np.ndarray, scores: np.ndarray, groups: np.ndarray, n_classes: int, threshold: float = 0.5,
                 n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                 names: tuple[str, ...] | None = None) -> dict[str, tuple[float, float]]:
    """Percentile CIs of each metric (default: all of ``CI_METRICS``) over ``n_boot`` resamples of whole
    groups (patients)."""
    y, scores, groups = np.asarray(y), np.asarray(scores), np.asarray(groups)
    names = names or CI_METRICS[2 if n_classes == 2 else 0]
    unique, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(unique))]
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(n_boot):
        picked = rng.integers(0, len(members), size=len(members))
        idx = np.concatenate([members[g] for g in picked])
        values = point_metrics(y[idx], scores[idx], n_classes, threshold)
        for name in names:
            draws[name].append(values[name])
    alpha = (1 - level) / 2
    out = {}
    for name, values in draws.items():
        arr = np.asarray(values, dtype=float)
        arr = arr[~np.isnan(arr)]  # resamples with one class only have no AUROC
        out[name] = (float(np.quantile(arr, alpha)), float(np.quantile(arr, 1 - alpha))) if len(arr) else (
            float("nan"), float("nan"))
    return out


def calibration(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Expected calibration error and the reliability diagram's bins (equal-width on [0, 1])."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        mask = which == b
        if not mask.any():
            continue
        confidence, observed = float(p[mask].mean()), float(y[mask].mean())
        ece += mask.mean() * abs(confidence - observed)
        rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "n": int(mask.sum()),
                     "mean_predicted": confidence, "observed_rate": observed})
    return {"ece": float(ece), "bins": rows}


def main_metric(n_classes: int) -> str:
    return "auroc" if n_classes == 2 else "macro_f1"


def subgroups(y: np.ndarray, scores: np.ndarray, labels: np.ndarray, n_classes: int, threshold: float = 0.5,
              patients: np.ndarray | None = None, n_boot: int = 200, seed: int = 0,
              min_images: int = 8) -> dict[str, dict[str, Any]]:
    """The same point metrics per subgroup (one-year age bin, sex), where a group has ``min_images``
    and, for binary models, both classes, with a patient-bootstrap CI of the main metric (AUROC or
    macro-F1) as ``ci95``; smaller groups are listed with their count only."""
    patients = np.arange(len(y)) if patients is None else np.asarray(patients)
    out: dict[str, dict[str, Any]] = {}
    for group in sorted(set(labels.tolist())):  # one kind per array: ages sort as numbers, not text
        mask = labels == group
        row: dict[str, Any] = {"n": int(mask.sum())}
        usable = mask.sum() >= min_images and (n_classes != 2 or len(np.unique(y[mask])) == 2)
        if usable:
            row |= {k: float(v) for k, v in point_metrics(y[mask], scores[mask], n_classes, threshold).items()
                    if k != "threshold"}
            name = main_metric(n_classes)
            row["ci95"] = list(bootstrap_ci(y[mask], scores[mask], patients[mask], n_classes, threshold, n_boot,
                                            seed, names=(name,))[name])
        out[str(group)] = row
    return out


def at_prevalence(sensitivity: float, specificity: float, prevalence: float) -> dict[str, float]:
    """PPV and NPV where fractures are as common as ``prevalence`` (Bayes), not as in the test set, which
    holds about as many fractures as normals by design: its own PPV / NPV are no clinical figures."""
    tp, fp = sensitivity * prevalence, (1 - specificity) * (1 - prevalence)
    tn, fn = specificity * (1 - prevalence), (1 - sensitivity) * prevalence
    return {"ppv": tp / (tp + fp) if tp + fp else float("nan"), "npv": tn / (tn + fn) if tn + fn else float("nan")}


def evaluate_test(y: np.ndarray, scores: np.ndarray, patients: np.ndarray, n_classes: int,
                  threshold: float = 0.5, n_boot: int = 1000, seed: int = 0,
                  groups: dict[str, np.ndarray] | None = None, prevalence: float | None = None) -> dict[str, Any]:
    """Point metrics, CIs, confusion matrix, (binary) calibration and ``groups`` subgroup metrics
    (e.g. ``{"age_bin": ..., "sex": ...}``) of one model on the test set; for binary models with a
    ``prevalence`` (of the data set's train+val images), PPV and NPV at that prevalence."""
    metrics = point_metrics(y, scores, n_classes, threshold)
    result: dict[str, Any] = {
        "n_images": int(len(y)), "n_patients": int(len(np.unique(patients))), "threshold": float(threshold),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "ci95": bootstrap_ci(y, scores, patients, n_classes, threshold, n_boot, seed),
        "confusion_matrix": confusion(y, predictions(scores, n_classes, threshold), n_classes).tolist(),
    }
    if n_classes == 2:
        result["calibration"] = calibration(y, scores)
        result["metrics"]["ece"] = result["calibration"]["ece"]
        result["test_prevalence"] = float(np.mean(y)) if len(y) else float("nan")
        if prevalence is not None:
            result["prevalence"] = float(prevalence)
            result["at_prevalence"] = at_prevalence(metrics["sensitivity"], metrics["specificity"], prevalence)
    # Subgroup CIs use fewer resamples: there are many groups, and each interval is wide anyway.
    result["subgroups"] = {name: subgroups(y, scores, np.asarray(labels), n_classes, threshold, patients,
                                           max(100, n_boot // 5), seed)
                           for name, labels in (groups or {}).items()}
    return result
