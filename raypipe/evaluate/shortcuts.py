"""Shortcut audit of a promoted binary model: could the text markers tell the label, and does it listen?

Text markers are a known shortcut in GRAZPEDWRI-DX (in one group every negative image had one). Masking
hides them (data/masking.py), but whether a model still reads them is a measurement, made at every
promotion and logged as ``shortcut_audit.json``:

* ``box_only_auroc``: how much the markers alone could tell. A logistic regression on per-image box
  features only (count, mean centre x/y, mean width/height; 0 when none), fitted on the training rows,
  AUROC on the test rows. Near 0.5: the markers carry no label; high: a shortcut is on offer.
* ``auroc_masked`` vs ``auroc_shuffled``: how much the model listens to marker places. The test images
  are prepared again with their own boxes masked *plus* the boxes of another test image (a fixed
  derangement), in the training masking mode (``fill`` when training used ``off``: then the markers
  themselves are hidden). Traceless masking makes the extra masks invisible and the AUROC stays; a
  model that reads mask traces or markers moves. ``shift`` = shuffled - masked; ``flag`` when
  ``|shift| > tolerance`` (default 0.02).
* ``subgroups``: AUROC with patient-bootstrap CIs per metal, cast and initial-exam group (cast and
  initial exam where the source has them: GRAZPEDWRI-DX), side by side.

Nothing patient-identifying is logged: counts, metrics and group names only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raypipe.data.manifest import format_boxes, parse_boxes
from raypipe.evaluate.clinical import subgroups
from raypipe.train.metrics import binary_metrics, scores_from_logits

DEFAULT_TOLERANCE = 0.02
FEATURES = ("count", "cx", "cy", "w", "h")


def box_features(text_boxes: Sequence[str]) -> np.ndarray:
    """(n, 5) per image: number of text boxes and their mean cx, cy, w, h (0 when there are none)."""
    out = np.zeros((len(text_boxes), len(FEATURES)), np.float64)
    for i, text in enumerate(text_boxes):
        boxes = parse_boxes(text or "")
        if boxes:
            out[i, 0] = len(boxes)
            out[i, 1:] = np.mean(np.asarray(boxes, np.float64), axis=0)
    return out


def box_only_auroc(train_boxes: Sequence[str], train_y: np.ndarray, test_boxes: Sequence[str],
                   test_y: np.ndarray) -> float:
    """Test AUROC of a logistic regression on box features fitted on train (NaN when a side has one class)."""
    from sklearn.linear_model import LogisticRegression

    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    if len(np.unique(train_y)) < 2 or len(np.unique(test_y)) < 2:
        return float("nan")
    x_train, x_test = box_features(train_boxes), box_features(test_boxes)
    if np.ptp(x_train, axis=0).max() == 0:  # no box anywhere, or all alike: the markers can tell nothing
        return 0.5
    model = LogisticRegression(max_iter=1000).fit(x_train, train_y)
    return float(binary_metrics(test_y, model.predict_proba(x_test)[:, 1])["auroc"])


def shuffled_boxes(text_boxes: Sequence[str], seed: int = 0) -> list[str]:
    """Each image's own boxes plus those of another image (a seeded derangement; one image: its own)."""
    n = len(text_boxes)
    order = np.random.default_rng(seed).permutation(n)
    other = np.empty(n, np.int64)
    other[order] = np.roll(order, -1)  # image order[k] borrows from order[k + 1]: never itself when n > 1
    return [format_boxes(parse_boxes(text_boxes[i] or "") + parse_boxes(text_boxes[j] or ""))
            for i, j in zip(range(n), other, strict=True)]


def flag_labels(data: Path | None, rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """Subgroup labels ("yes"/"no") of ``rows``: metal from the manifest; cast and initial exam from a
    GRAZPEDWRI-DX ``dataset.csv`` (other sources do not record them)."""
    yes_no = np.array(["no", "yes"])
    out = {"metal": yes_no[rows["metal"].to_numpy(dtype=bool).astype(int)]}
    if data is None or not (rows["source"] == "grazpedwri").all():
        return out
    from raypipe.data.sources import _graz_csv

    table = pd.read_csv(_graz_csv(Path(data)), encoding="utf-8-sig", dtype=str, keep_default_na=False)
    table = table.drop_duplicates("filestem").set_index("filestem")
    for col in ("cast", "initial_exam"):
        if col in table.columns:
            flags = table[col].reindex(rows["image_id"].astype(str)).fillna("").to_numpy()
            out[col] = yes_no[(flags == "1").astype(int)]
    return out


def audit(*, train_boxes: Sequence[str], train_y: np.ndarray, test_boxes: Sequence[str], test_y: np.ndarray,
          scores: np.ndarray, rescore: Callable[[list[str]], np.ndarray], masking: str,
          groups: dict[str, np.ndarray], patients: np.ndarray, threshold: float,
          tolerance: float = DEFAULT_TOLERANCE, seed: int = 0, n_boot: int = 200) -> dict[str, Any]:
    """The audit (module docstring). ``rescore(boxes)`` scores the test images prepared with ``boxes``
    (one string per test image) in ``shuffle_masking``; ``scores`` are the model's test scores as trained."""
    test_y = np.asarray(test_y)
    masked = float(binary_metrics(test_y, scores)["auroc"])
    shuffle_masking = masking if masking != "off" else "fill"
    with_boxes = int(sum(bool(b) for b in test_boxes))
    if with_boxes:
        shuffled = float(binary_metrics(test_y, rescore(shuffled_boxes(list(test_boxes), seed)))["auroc"])
    else:  # no marker in the test set: nothing to move, nothing to listen to
        shuffled = masked
    shift = shuffled - masked
    return {
        "box_only_auroc": box_only_auroc(train_boxes, train_y, test_boxes, test_y),
        "auroc_masked": masked, "auroc_shuffled": shuffled, "shift": shift,
        "tolerance": float(tolerance), "flag": bool(abs(shift) > tolerance) if not np.isnan(shift) else False,
        "masking": masking, "shuffle_masking": shuffle_masking,
        "n_test_images": int(len(test_y)), "n_test_images_with_boxes": with_boxes,
        "subgroups": {name: subgroups(test_y, scores, np.asarray(labels), 2, threshold, patients, n_boot, seed)
                      for name, labels in groups.items()},
    }


def audit_model(model, cfg, data: Path, prepared, target, test_frame: pd.DataFrame, test_y: np.ndarray,
                scores: np.ndarray, patients: np.ndarray, threshold: float,
                tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Any]:
    """``audit`` of a promoted torch ``model`` (binary) trained with ``cfg`` on ``prepared``'s train+val rows.

    ``test_frame``: the target's test rows of the manifest, row-aligned with ``test_y`` and ``scores``.
    """
    import torch

    from raypipe.data.dataset import normalise
    from raypipe.data.images import prepare

    fit = prepared.manifest[prepared.splits["split"].isin(["train", "val"]).to_numpy()]
    fit_rows, fit_y = target.select(fit, prepared.scheme)
    shuffle_masking = cfg.masking if cfg.masking != "off" else "fill"

    @torch.no_grad()
    def rescore(boxes: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(boxes), 64):
            batch = [normalise(prepare(path, b, cfg.image_size, shuffle_masking if b else "off"))
                     for path, b in zip(test_frame["path"].iloc[start:start + 64], boxes[start:start + 64],
                                        strict=True)]
            out.append(scores_from_logits(model(torch.from_numpy(np.stack(batch))), 2))
        return np.concatenate(out)

    return audit(train_boxes=fit_rows["text_boxes"].fillna("").tolist(), train_y=fit_y,
                 test_boxes=test_frame["text_boxes"].fillna("").tolist(), test_y=test_y, scores=scores,
                 rescore=rescore, masking=cfg.masking, groups=flag_labels(data, test_frame), patients=patients,
                 threshold=threshold, tolerance=tolerance, seed=cfg.seed)
