"""Clinical evaluation: CIs hold the point estimate, narrow with more patients, respect patient clusters."""

from __future__ import annotations

import numpy as np
import pytest

from raypipe.evaluate.clinical import bootstrap_ci, calibration, evaluate_test


def scored(n_patients: int, views: int = 2, seed: int = 0):
    """Patients with ``views`` images each sharing a label and a patient effect on the score."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n_patients)
    effect = rng.normal(0, 1, n_patients)
    y = np.repeat(label, views)
    patients = np.repeat(np.arange(n_patients), views)
    logits = 0.5 * (2 * y - 1) + np.repeat(effect, views) + rng.normal(0, 0.3, len(y))
    return y, 1 / (1 + np.exp(-logits)), patients


def width(ci):
    return ci[1] - ci[0]


def test_ci_contains_point_estimate_and_narrows_with_more_patients():
    small = evaluate_test(*scored(40), n_classes=2, threshold=0.5, n_boot=300)
    large = evaluate_test(*scored(400), n_classes=2, threshold=0.5, n_boot=300)
    for result in (small, large):
        for name in ("auroc", "auprc", "sensitivity", "specificity", "f1"):
            low, high = result["ci95"][name]
            assert low <= result["metrics"][name] <= high, name
    assert width(large["ci95"]["auroc"]) < 0.6 * width(small["ci95"]["auroc"])
    assert small["n_patients"] == 40 and small["n_images"] == 80


def test_resampling_patients_is_wider_than_resampling_images_when_views_correlate():
    y, p, patients = scored(60, views=4)
    by_patient = bootstrap_ci(y, p, patients, 2, n_boot=400)["auroc"]
    by_image = bootstrap_ci(y, p, np.arange(len(y)), 2, n_boot=400)["auroc"]
    assert width(by_patient) > width(by_image)


def test_calibration_error_small_when_calibrated_large_when_not():
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 1, 20000)
    y = (rng.uniform(0, 1, p.size) < p).astype(int)
    assert calibration(y, p)["ece"] < 0.02
    assert calibration(y, np.clip(p * 0.3, 0, 1))["ece"] > 0.2


def test_multiclass_has_accuracy_macro_f1_and_confusion():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 200)
    probs = np.eye(4)[y] * 0.6 + rng.dirichlet(np.ones(4), 200) * 0.4
    result = evaluate_test(y, probs, np.arange(200) // 2, n_classes=4, n_boot=200)
    assert set(result["ci95"]) == {"accuracy", "macro_f1"}
    assert np.asarray(result["confusion_matrix"]).sum() == 200 and "calibration" not in result


def test_subgroups_report_each_group_and_only_counts_for_small_or_one_class_groups():
    y, p, patients = scored(100)
    age_bin = np.repeat(np.arange(100) % 3, 2)  # three groups of ~66 images
    age_bin[:2] = 9  # one patient alone in bin 9: too small to score
    result = evaluate_test(y, p, patients, 2, 0.5, n_boot=50, groups={"age_bin": age_bin})
    groups = result["subgroups"]["age_bin"]
    assert set(groups) == {"0", "1", "2", "9"} and sum(g["n"] for g in groups.values()) == 200
    assert groups["9"] == {"n": 2}
    assert all(0 <= groups[k]["auroc"] <= 1 for k in "012")


def test_subgroups_have_cis_around_their_estimate_and_small_groups_only_a_count():
    y, p, patients = scored(200)
    labels = np.where(np.arange(len(y)) < 390, "large", "tiny")  # 390 images vs 10 images
    labels[-4:] = "four"
    groups = evaluate_test(y, p, patients, 2, 0.5, n_boot=200, groups={"g": labels})["subgroups"]["g"]
    low, high = groups["large"]["ci95"]
    assert low <= groups["large"]["auroc"] <= high
    assert groups["four"] == {"n": 4}


def test_ppv_and_npv_follow_the_prevalence_not_the_balanced_test_set():
    from raypipe.evaluate.clinical import at_prevalence

    balanced = at_prevalence(0.9, 0.8, 0.5)
    rare = at_prevalence(0.9, 0.8, 0.1)
    assert balanced["ppv"] == pytest.approx(0.45 / (0.45 + 0.10))
    assert rare["ppv"] == pytest.approx(0.09 / (0.09 + 0.18)) and rare["ppv"] < balanced["ppv"]
    assert rare["npv"] > balanced["npv"]
