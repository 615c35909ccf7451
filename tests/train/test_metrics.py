"""fastft.train.metrics against scikit-learn computed directly on the same data, plus hand-checked cases."""

import json
import math
import warnings

import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn import metrics as skm

from fastft.train.metrics import classification_metrics, multilabel_metrics, perplexity, regression_metrics


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("n_classes,n", [(2, 97), (3, 150), (5, 61)])
def test_classification_matches_sklearn(n_classes, n):
    rng = np.random.default_rng(n_classes * 100 + n)
    labels = rng.integers(0, n_classes, n)
    labels[:n_classes] = np.arange(n_classes)  # every class present
    logits = rng.normal(size=(n, n_classes)) + 1.5 * np.eye(n_classes)[labels]  # informative but imperfect
    preds = logits.argmax(-1)
    m = classification_metrics(logits, labels)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, preds))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(labels, preds, average="macro"))
    assert m["f1_micro"] == pytest.approx(skm.f1_score(labels, preds, average="micro"))
    assert m["precision_macro"] == pytest.approx(skm.precision_score(labels, preds, average="macro"))
    assert m["recall_macro"] == pytest.approx(skm.recall_score(labels, preds, average="macro"))
    probs = _softmax(logits)
    if n_classes == 2:
        want_auc = skm.roc_auc_score(labels, probs[:, 1])
    else:
        want_auc = skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    assert m["auc_roc"] == pytest.approx(want_auc)
    assert m["confusion_matrix"] == skm.confusion_matrix(labels, preds).tolist()
    assert 0.4 < m["accuracy"] < 1.0  # the data is informative, so this is a real comparison


def test_classification_hand_checked():
    # labels 0 1 1 0; predictions 0 1 0 0 -> one false negative of class 1.
    logits = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 0.5], [0.2, 0.1]])
    labels = np.array([0, 1, 1, 0])
    m = classification_metrics(logits, labels)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["confusion_matrix"] == [[2, 0], [1, 1]]
    # class 0: P = 2/3, R = 1, F1 = 0.8; class 1: P = 1, R = 1/2, F1 = 2/3.
    assert m["f1_macro"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert m["precision_macro"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["recall_macro"] == pytest.approx(0.75)
    # p(class 1) is monotone in l1 - l0 = -2, 3, -0.5, -0.1. Positives score 3 and -0.5, negatives -2 and
    # -0.1; correctly ordered pairs: 3>-2, 3>-0.1, -0.5>-2 (not -0.5>-0.1) -> AUC = 3/4.
    assert m["auc_roc"] == pytest.approx(0.75)


def test_auc_undefined_is_none_without_warnings():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(20, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(logits, np.zeros(20, dtype=int))
        ml = multilabel_metrics(logits, np.zeros((20, 2)))
        r = regression_metrics(np.ones(5), np.arange(5.0))
    assert m["auc_roc"] is None and ml["auc_roc"] is None and r["pearson"] is None
    assert m["confusion_matrix"][1] == [0, 0]


def test_multiclass_auc_with_absent_class_averages_defined_classes():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(40, 3))
    labels = rng.integers(0, 2, 40)  # class 2 never occurs
    m = classification_metrics(logits, labels)
    probs = _softmax(logits)
    want = np.mean([skm.roc_auc_score(labels == c, probs[:, c]) for c in (0, 1)])
    assert m["auc_roc"] == pytest.approx(want)
    assert len(m["confusion_matrix"]) == 3


def test_multilabel_matches_sklearn():
    rng = np.random.default_rng(2)
    n, c = 80, 4
    labels = (rng.random((n, c)) < 0.4).astype(np.float32)
    logits = rng.normal(size=(n, c)) + 2.0 * (labels - 0.5)
    preds = (logits > 0).astype(int)
    m = multilabel_metrics(logits, labels)
    y = labels.astype(int)
    assert m["accuracy"] == m["subset_accuracy"] == pytest.approx(skm.accuracy_score(y, preds))
    assert m["f1_micro"] == pytest.approx(skm.f1_score(y, preds, average="micro"))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, preds, average="macro"))
    assert m["precision_micro"] == pytest.approx(skm.precision_score(y, preds, average="micro"))
    assert m["recall_micro"] == pytest.approx(skm.recall_score(y, preds, average="micro"))
    assert m["hamming_loss"] == pytest.approx(skm.hamming_loss(y, preds))
    assert m["auc_roc"] == pytest.approx(skm.roc_auc_score(y, 1 / (1 + np.exp(-logits)), average="macro"))


def test_regression_matches_sklearn_and_hand_case():
    rng = np.random.default_rng(3)
    labels = rng.normal(size=50)
    preds = labels + 0.3 * rng.normal(size=50)
    m = regression_metrics(preds[:, None], labels)  # (N, 1) logits like HF regression heads
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(labels, preds))
    assert m["mse"] == pytest.approx(skm.mean_squared_error(labels, preds))
    assert m["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(labels, preds)))
    assert m["pearson"] == pytest.approx(pearsonr(preds, labels)[0])
    assert m["r2"] == pytest.approx(skm.r2_score(labels, preds))
    h = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
    assert h["mae"] == pytest.approx(1 / 3) and h["mse"] == pytest.approx(1 / 3)
    assert h["rmse"] == pytest.approx(math.sqrt(1 / 3))


def test_perplexity_and_bad_input():
    assert perplexity(math.log(10.0)) == pytest.approx(10.0)
    assert perplexity(0.0) == 1.0
    assert perplexity(1e6) == float("inf")
    with pytest.raises(ValueError, match="empty"):
        regression_metrics(np.zeros(0), np.zeros(0))


def test_results_are_json_serialisable():
    import json

    rng = np.random.default_rng(4)
    m = classification_metrics(rng.normal(size=(10, 3)), rng.integers(0, 3, 10))
    json.dumps(m)


def test_nonfinite_classification_rows_count_as_wrong():
    """#21 §7: a diverged run (--lr 1e10) crashed in scikit-learn on NaN logits at evaluation."""
    nan, inf = float("nan"), float("inf")
    labels = np.array([0, 1, 1, 0, 1])
    logits = np.array([[2.0, -1.0], [nan, nan], [-1.0, 3.0], [inf, 0.0], [0.0, -inf]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(logits, labels)
    assert m["accuracy"] == pytest.approx(0.4) and m["nonfinite_rows"] == 3
    assert m["f1_micro"] == pytest.approx(0.4) and m["precision_macro"] < 1.0
    assert m["confusion_matrix"] == [[1, 0], [0, 1]]  # only the rows with a real prediction
    p = _softmax(logits[[0, 2]])[:, 1]
    want = skm.roc_auc_score(labels, [p[0], 0.0, p[1], 1.0, 0.0])  # bad rows: the worst score
    assert m["auc_roc"] == pytest.approx(want)
    everything_nan = np.full((6, 3), nan)  # what --lr 1e10 gives
    m = classification_metrics(everything_nan, np.array([0, 1, 2, 0, 1, 2]))
    assert m["accuracy"] == 0.0 and m["f1_macro"] == 0.0 and m["auc_roc"] == 0.0 and m["nonfinite_rows"] == 6
    y = np.array([[1, 0], [0, 1], [1, 1]])
    m = multilabel_metrics(np.array([[3.0, -3.0], [nan, 2.0], [inf, 1.0]]), y)
    assert m["hamming_loss"] == pytest.approx(2 / 6) and m["accuracy"] == pytest.approx(1 / 3)
    assert m["nonfinite_rows"] == 2
    json.dumps(m)


def test_nonfinite_or_huge_regression_values_never_raise():
    """#21 §7: an inf or 1e308 label/prediction crashed scikit-learn's regression metrics."""
    nan, inf = float("nan"), float("inf")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = regression_metrics(np.array([1.0, nan, 3.0]), np.array([1.0, 2.0, 3.0]))
        assert m["mae"] == m["mse"] == m["rmse"] == inf and m["r2"] == -inf
        assert m["pearson"] is None and m["nonfinite_rows"] == 1
        m = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, inf, 3.0]))
        assert m["mse"] == inf and m["r2"] is None and m["pearson"] is None and "nonfinite_rows" not in m
        m = regression_metrics(np.array([1e308, -1e308, 0.0]), np.array([0.0, 1e308, 1.0]))
        assert m["mae"] == m["mse"] == inf and m["pearson"] is None
    json.dumps(m)


def test_metrics_log_reads_records_and_skips_torn_lines(tmp_path):
    from fastft.train.metrics_log import iter_lines, read_records

    path = tmp_path / "metrics.jsonl"
    assert read_records(str(path)) == []  # no file yet
    path.write_text('{"type": "train", "step": 1}\n{"type": "eval", "step": 1}\n{"type": "ev')
    assert [r["type"] for r in read_records(str(path))] == ["train", "eval"]
    assert read_records(str(path), "eval") == [{"type": "eval", "step": 1}]
    assert [line for line, _ in iter_lines(str(path))][0] == '{"type": "train", "step": 1}\n'
