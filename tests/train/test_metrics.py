import numpy as np

from raypipe.train.metrics import binary_metrics, multiclass_metrics, youden_threshold


def test_binary_perfect_and_youden():
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    m = binary_metrics(y, p)
    assert m["auroc"] == 1.0 and m["sensitivity"] == 1.0 and m["specificity"] == 1.0
    assert 0.3 < youden_threshold(y, p) <= 0.8


def test_binary_single_class_is_nan_not_crash():
    m = binary_metrics(np.array([1, 1]), np.array([0.2, 0.9]))
    assert np.isnan(m["auroc"]) and np.isnan(m["specificity"])


def test_multiclass_macro_f1():
    y = np.array([0, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 2, 1]]
    m = multiclass_metrics(y, probs)
    assert m["accuracy"] == 0.75 and 0 < m["macro_f1"] < 1


def test_scores_from_logits_binary_is_sigmoid_and_multiclass_rows_sum_to_one():
    import torch

    from raypipe.train.metrics import scores_from_logits

    binary = scores_from_logits(torch.tensor([[0.0], [2.0]]), 2)
    assert binary.shape == (2,) and binary[0] == 0.5 and 0.88 < binary[1] < 0.89
    multi = scores_from_logits(torch.tensor([[1.0, 1.0, 1.0], [5.0, 0.0, 0.0]]), 3)
    assert multi.shape == (2, 3) and np.allclose(multi.sum(1), 1) and np.allclose(multi[0], 1 / 3)
