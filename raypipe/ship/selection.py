"""Choosing a champion without the test set.

The test set is looked at once per version, to report; it never decides. What decides is evidence
from train+val alone: out-of-fold (OOF) scores of the shipped recipe, from a patient-grouped K-fold
cross-fit (``cross_fit``): each image is scored by a model of the same recipe (config, epochs, learning
rates) that never saw its patient. From those scores come

- the selection figure with a patient-bootstrap CI (``Selection``), which must clear chance: AUROC 0.5,
  or for the age model the macro-F1 of always answering the majority class;
- the comparison with the current champion: the same images scored by both recipes, a paired patient
  bootstrap of the difference, and ``champion`` moves only when its lower bound clears the margin;
- the operating threshold of a binary model: the Youden point of the OOF scores, i.e. of images each
  model had not seen (a threshold matched on images the shipped model trained on sits elsewhere).

Nothing here holds an identifier: patients are integer codes in row order, the rows those of the
target's train+val split (the same for every version on the same split hash).
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raypipe.evaluate.clinical import main_metric, point_metrics
from raypipe.train.metrics import youden_threshold

OOF_FILE = "oof_predictions.npz"
OOF_ARTIFACT = f"selection/{OOF_FILE}"


@dataclass
class Selection:
    """A version's out-of-fold evidence: the figure that decides, with its CI and what chance is."""

    metric: str  # auroc | macro_f1
    value: float
    ci95: tuple[float, float]
    chance: float
    y: np.ndarray
    scores: np.ndarray
    groups: np.ndarray  # patient codes (0..P-1) in row order: grouping only
    folds: int

    @property
    def above_chance(self) -> bool:
        return bool(self.ci95[0] > self.chance)

    def threshold(self) -> float:
        """The Youden point of the OOF scores (binary models); 0.5 argmax for the age model."""
        return float(youden_threshold(self.y, self.scores)) if self.scores.ndim == 1 else 0.5

    def save(self, directory: Path) -> Path:
        path = Path(directory) / OOF_FILE
        np.savez(path, y=self.y, scores=self.scores, groups=self.groups, folds=self.folds)
        return path

    @classmethod
    def load(cls, path: Path, n_boot: int = 1000, seed: int = 0) -> Selection:
        with np.load(path, allow_pickle=False) as data:
            return evidence(data["y"], data["scores"], data["groups"], int(data["folds"]), n_boot, seed)


def chance_level(y: np.ndarray, n_classes: int) -> float:
    """What a model that learned nothing scores: AUROC 0.5; macro-F1 of always the majority class."""
    if n_classes == 2:
        return 0.5
    counts = np.bincount(np.asarray(y), minlength=n_classes)
    p = counts.max() / max(counts.sum(), 1)
    return float(2 * p / (1 + p) / n_classes)


def _metric(y: np.ndarray, scores: np.ndarray) -> float:
    n_classes = 2 if scores.ndim == 1 else scores.shape[1]
    return point_metrics(y, scores, n_classes)[main_metric(n_classes)]


def _resamples(groups: np.ndarray, n_boot: int, seed: int):
    """Index arrays of ``n_boot`` resamples of whole patients."""
    _, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)] if len(groups) else []
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        picked = rng.integers(0, len(members), size=len(members))
        yield np.concatenate([members[g] for g in picked])


def _interval(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    if not len(arr):
        return (float("nan"), float("nan"))
    return float(np.quantile(arr, 0.025)), float(np.quantile(arr, 0.975))


def evidence(y: np.ndarray, scores: np.ndarray, groups: np.ndarray, folds: int, n_boot: int = 1000,
             seed: int = 0) -> Selection:
    y, scores, groups = np.asarray(y), np.asarray(scores), np.asarray(groups)
    n_classes = 2 if scores.ndim == 1 else scores.shape[1]
    ci = _interval([_metric(y[i], scores[i]) for i in _resamples(groups, n_boot, seed)])
    return Selection(main_metric(n_classes), _metric(y, scores), ci, chance_level(y, n_classes), y, scores, groups,
                     folds)


def paired_difference(new: Selection, old: Selection, n_boot: int = 1000, seed: int = 0
                      ) -> tuple[float, tuple[float, float]]:
    """``new - old`` on the same images, with a paired patient-bootstrap 95% CI (same resample for both)."""
    if not (np.array_equal(new.y, old.y) and np.array_equal(new.groups, old.groups)):
        raise ValueError("the two versions were not scored on the same images")
    draws = [_metric(new.y[i], new.scores[i]) - _metric(old.y[i], old.scores[i])
             for i in _resamples(new.groups, n_boot, seed)]
    return new.value - old.value, _interval(draws)


def cross_fit(rows: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int, seed: int,
              score_fold: Callable[[int, np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Out-of-fold scores: patient-grouped, label-stratified ``folds`` folds; ``score_fold(fold, train_idx,
    held_idx)`` trains the recipe on one side and returns its scores of the other."""
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    out: np.ndarray | None = None
    for fold, (train_idx, held_idx) in enumerate(splitter.split(rows, y, groups)):
        scores = np.asarray(score_fold(fold, train_idx, held_idx))
        if out is None:
            out = np.zeros((len(rows),) + scores.shape[1:], dtype=np.float64)
        out[held_idx] = scores
    assert out is not None
    return out


def patient_codes(patient_ids: np.ndarray) -> np.ndarray:
    """Integer codes (0..P-1) in order of first appearance: the grouping, without the identifiers."""
    _, first, inverse = np.unique(np.asarray(patient_ids).astype(str), return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse].astype(np.int64)


def load_from_run(client, run_id: str, n_boot: int = 1000, seed: int = 0) -> Selection | None:
    """The OOF evidence a promote run logged, or None (a version promoted before selection existed)."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return Selection.load(Path(client.download_artifacts(run_id, OOF_ARTIFACT, tmp)), n_boot, seed)
    except Exception:  # noqa: BLE001 - missing artifact: MLflow raises several types
        return None


def describe(selection: Selection) -> dict:
    """What test_evaluation.json and the report say about the decision, in plain words."""
    out = {k: v for k, v in dataclasses.asdict(selection).items() if k in ("metric", "value", "ci95", "chance",
                                                                            "folds")}
    return out | {"decided_on": "out-of-fold", "n_images": int(len(selection.y)),
                  "n_patients": int(len(np.unique(selection.groups))),
                  "above_chance": selection.above_chance}
