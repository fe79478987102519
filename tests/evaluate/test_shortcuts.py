"""The shortcut audit: what the text boxes alone tell, and whether a model moves when mask places shuffle."""

from __future__ import annotations

import numpy as np
import pandas as pd

from raypipe.data.manifest import parse_boxes
from raypipe.evaluate import shortcuts

TOP_LEFT, BOTTOM_RIGHT = "0.1 0.1 0.1 0.05", "0.9 0.9 0.1 0.05"


def _marker_set(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    y = np.random.default_rng(seed).integers(0, 2, n)
    return [TOP_LEFT if label else BOTTOM_RIGHT for label in y], y


def test_box_features_count_and_mean_position():
    feats = shortcuts.box_features(["", TOP_LEFT, f"{TOP_LEFT};{BOTTOM_RIGHT}"])
    np.testing.assert_allclose(feats[0], 0)
    np.testing.assert_allclose(feats[1], [1, 0.1, 0.1, 0.1, 0.05])
    np.testing.assert_allclose(feats[2], [2, 0.5, 0.5, 0.1, 0.05])


def test_box_only_auroc_finds_a_marker_shortcut_and_not_a_fair_one():
    boxes, y = _marker_set(80, 0)
    test_boxes, test_y = _marker_set(40, 1)
    assert shortcuts.box_only_auroc(boxes, y, test_boxes, test_y) == 1.0
    rng = np.random.default_rng(2)  # corners independent of the label: nothing to learn
    fair = [TOP_LEFT if c else BOTTOM_RIGHT for c in rng.integers(0, 2, 80)]
    fair_test = [TOP_LEFT if c else BOTTOM_RIGHT for c in rng.integers(0, 2, 40)]
    assert abs(shortcuts.box_only_auroc(fair, y, fair_test, test_y) - 0.5) < 0.2
    assert shortcuts.box_only_auroc([""] * 80, y, [""] * 40, test_y) == 0.5  # no boxes at all


def test_shuffled_boxes_add_another_images_boxes_never_its_own():
    boxes = [f"0.{i} 0.5 0.1 0.1" for i in range(1, 8)] + [""]
    out = shortcuts.shuffled_boxes(boxes, seed=3)
    assert out == shortcuts.shuffled_boxes(boxes, seed=3)  # fixed permutation
    borrowed = set()
    for own, mixed in zip(boxes, out, strict=True):
        got = parse_boxes(mixed)
        assert got[: len(parse_boxes(own))] == parse_boxes(own)  # its own boxes stay masked
        extra = got[len(parse_boxes(own)):]
        assert parse_boxes(own) != extra or not own
        borrowed.update(map(tuple, extra))
    assert len(borrowed) == 7  # every image's boxes were lent to exactly one other image


def _audit(rescore, scores, y, tolerance=0.02):
    boxes, _ = _marker_set(len(y), 5)
    return shortcuts.audit(train_boxes=boxes, train_y=y, test_boxes=boxes, test_y=y, scores=scores,
                           rescore=rescore, masking="fill", groups={"metal": np.array(["no"] * len(y))},
                           patients=np.arange(len(y)), threshold=0.5, tolerance=tolerance)


def test_audit_flags_a_model_that_moves_under_shuffled_masks_only():
    y = np.random.default_rng(4).integers(0, 2, 60)
    scores = np.where(y == 1, 0.8, 0.2) + np.random.default_rng(5).normal(0, 0.3, 60)
    steady = _audit(lambda boxes: scores, scores, y)
    assert steady["shift"] == 0 and not steady["flag"]
    moved = _audit(lambda boxes: np.random.default_rng(6).random(len(boxes)), scores, y)
    assert moved["flag"] and moved["auroc_shuffled"] < moved["auroc_masked"] - 0.02
    assert set(moved["subgroups"]) == {"metal"} and moved["subgroups"]["metal"]["no"]["n"] == 60
    assert not _audit(lambda boxes: np.random.default_rng(6).random(len(boxes)), scores, y, tolerance=1.0)["flag"]


def test_flag_labels_read_cast_and_initial_exam_from_grazpedwri(grazpedwri_tiny):
    from raypipe.data.sources import load_source

    rows = load_source(grazpedwri_tiny)
    labels = shortcuts.flag_labels(grazpedwri_tiny, rows)
    assert set(labels) == {"metal", "cast", "initial_exam"}
    assert (labels["initial_exam"] == "yes").all() and (labels["cast"] == "no").all()
    assert set(shortcuts.flag_labels(None, pd.DataFrame({"metal": [True], "source": ["csv"]}))) == {"metal"}
