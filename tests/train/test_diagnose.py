"""fastft.train.diagnose: collapse detection, small-data warnings, class weights, label report, tie-break."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from fastft.train.diagnose import (
    Decision,
    better,
    class_weights,
    collapse_report,
    constant_macro_f1,
    imbalance_ratio,
    label_distribution,
    macro_f1,
    small_data_warnings,
)
from fastft.train.errors import ConfigError
from fastft.train.metrics import classification_metrics, regression_metrics

CLS = "single_label_classification"
ML = "multi_label_classification"


def _imbalanced_labels(rng, n=300, mix=(0.64, 0.27, 0.09)):
    return rng.choice(len(mix), size=n, p=mix)


# ---------------------------------------------------------------------------------------------
# collapse: single-label classification
# ---------------------------------------------------------------------------------------------


def test_issue_case_all_majority_with_rising_auc_is_collapsed():
    """The issue's run: every row predicted 'positive' while the AUC rose from 0.42 to 0.62."""
    rng = np.random.default_rng(0)
    y = _imbalanced_labels(rng)
    reports = []
    for signal in (0.0, 0.3, 0.6):  # more signal in the logits -> higher AUC, argmax still class 0
        logits = rng.normal(size=(len(y), 3)) * 0.1
        logits[np.arange(len(y)), y] += signal * 0.1
        logits[:, 0] += 5.0
        m = classification_metrics(logits, y)
        assert m["accuracy"] == pytest.approx(np.mean(y == 0))
        rep = collapse_report(CLS, logits, y, m)
        assert rep is not None and rep["collapsed"] is True
        assert any("class 0 for 100.0% of rows" in s for s in rep["symptoms"])
        assert any("macro-F1" in s for s in rep["symptoms"])
        reports.append((m["auc_roc"], rep))
    assert reports[-1][0] > 0.6  # AUC well above chance, yet collapsed
    msg = reports[-1][1]["message"]
    assert "\n" not in msg and "--epochs" in msg and "--lr" in msg and "--class-weights auto" in msg


def test_good_model_is_not_collapsed():
    rng = np.random.default_rng(1)
    y = _imbalanced_labels(rng)
    logits = rng.normal(size=(len(y), 3))
    logits[np.arange(len(y)), y] += 3.0
    m = classification_metrics(logits, y)
    assert m["accuracy"] > 0.8
    assert collapse_report(CLS, logits, y, m) is None
    assert collapse_report(CLS, logits, y) is None  # metrics not given: computed here
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    assert collapse_report(CLS, probs, y, None) is None


def test_chance_auc_alone_is_a_symptom():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, size=2000)
    logits = rng.normal(size=(2000, 2))  # random: predicts both classes, AUC ~ 0.5
    rep = collapse_report(CLS, logits, y)
    assert rep is not None
    assert any("AUC" in s for s in rep["symptoms"])
    assert not any("of rows" in s for s in rep["symptoms"])
    # AUC taken from the metrics when given (so the warning quotes the logged number)
    assert "AUC 0.777" not in rep["message"]
    good = logits.copy()
    good[np.arange(2000), y] += 4
    assert collapse_report(CLS, good, y, {"auc_roc": 0.777}) is None
    rep2 = collapse_report(CLS, good, y, {"auc_roc": 0.52})
    assert rep2 is not None and "AUC 0.520" in rep2["message"]


def test_single_class_threshold_is_99_percent():
    y = np.array([1] * 5 + [0] * 65 + [2] * 30)
    for n_other, expect in ((0, True), (1, True), (2, False), (5, False)):
        logits = np.tile([5.0, 0.0, 0.0], (100, 1))
        logits[:n_other] = [0.0, 5.0, 0.0]  # the first rows (class 1) predicted as class 1
        rep = collapse_report(CLS, logits, y, {"auc_roc": 0.9})  # keep the AUC symptom out
        has = rep is not None and any("of rows" in s for s in rep["symptoms"])
        assert has is expect, n_other


def test_binary_auc_matches_sklearn_with_ties():
    from fastft.train.numerics import binary_auc as _binary_auc
    from fastft.train.numerics import macro_auc as _macro_auc

    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, size=500)
    s = np.round(rng.normal(size=500) + y * 0.5, 1)  # many ties
    assert _binary_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    k = 4
    y4 = rng.integers(0, k, size=400)
    p = rng.dirichlet(np.ones(k), size=400)
    ref = roc_auc_score(y4, p, multi_class="ovr", average="macro")
    assert _macro_auc(y4[:, None] == np.arange(k), p) == pytest.approx(ref, abs=1e-12)
    assert _binary_auc(np.zeros(5), np.arange(5.0)) is None


@pytest.mark.parametrize("k,seed", [(2, 0), (3, 1), (5, 2), (7, 3)])
def test_constant_macro_f1_matches_sklearn(k, seed):
    rng = np.random.default_rng(seed)
    y = rng.choice(k, size=257, p=rng.dirichlet(np.ones(k) * 0.7))
    best = max(
        f1_score(y, np.full_like(y, c), average="macro", labels=list(range(k)), zero_division=0)
        for c in range(k)
    )
    assert constant_macro_f1(y, k) == pytest.approx(best, abs=1e-12)
    preds = rng.integers(0, k, size=len(y))
    ref = f1_score(y, preds, average="macro", labels=list(range(k)), zero_division=0)
    assert macro_f1(y, preds, k) == pytest.approx(ref, abs=1e-12)


def test_constant_macro_f1_with_an_absent_class():
    y = np.array([0, 0, 0, 1])  # class 2 has no rows
    ref = f1_score(y, np.zeros(4, int), average="macro", labels=[0, 1, 2], zero_division=0)
    assert constant_macro_f1(y, 3) == pytest.approx(ref)


def test_ignore_index_rows_are_dropped():
    y = np.array([0, 1, 2, 1, -100, -100])
    logits = np.eye(3)[np.array([0, 1, 2, 1, 0, 0])] * 4
    assert collapse_report(CLS, logits, y) is None


# ---------------------------------------------------------------------------------------------
# collapse: multilabel, regression, causal LM
# ---------------------------------------------------------------------------------------------


def test_multilabel_all_zero_and_good():
    rng = np.random.default_rng(5)
    y = (rng.random((200, 4)) < 0.3).astype(np.float32)
    zero = rng.normal(size=(200, 4)) - 6.0  # every logit < 0: nothing predicted
    rep = collapse_report(ML, zero, y)
    assert rep is not None and any("no label for 100.0% of rows" in s for s in rep["symptoms"])
    same = np.tile([3.0, -3.0, 3.0, -3.0], (200, 1)) + rng.normal(size=(200, 4)) * 0.01
    rep = collapse_report(ML, same, y, {"auc_roc": 0.8})
    assert rep is not None and "[0, 2]" in rep["symptoms"][0]
    good = np.where(y > 0, 2.0, -2.0) + rng.normal(size=(200, 4))
    assert collapse_report(ML, good, y) is None
    # sigmoid probabilities are thresholded at 0.5
    assert collapse_report(ML, 1 / (1 + np.exp(-good)), y) is None


def test_regression_constant_and_mean_and_good():
    rng = np.random.default_rng(6)
    t = rng.normal(3.0, 2.0, size=300)
    const = np.full(300, 3.0) + rng.normal(size=300) * 1e-3
    rep = collapse_report("regression", const, t)
    assert rep is not None and any("nearly constant" in s for s in rep["symptoms"])
    assert "--class-weights" not in rep["message"]
    noisy = rng.normal(3.0, 2.0, size=300)  # varies, but uncorrelated: R^2 < 0
    rep = collapse_report("regression", noisy[:, None], t)
    assert rep is not None and any("R^2" in s for s in rep["symptoms"])
    assert not any("constant" in s for s in rep["symptoms"])
    good = t + rng.normal(size=300) * 0.3
    m = regression_metrics(good, t)
    assert collapse_report("regression", good, t, m) is None


def test_causal_lm_never_and_unknown_type_raises():
    assert collapse_report("causal_lm", np.zeros((3, 5)), np.zeros(3)) is None
    with pytest.raises(ValueError, match="unknown problem_type"):
        collapse_report("ranking", np.zeros((3, 2)), np.zeros(3))


def _tags(rng, n=40, t=12, o_share=0.8):
    """(N, T) gold tag ids, 0 = O for ``o_share`` of words, -100 after each sentence's end."""
    y = np.where(rng.random((n, t)) < o_share, 0, rng.integers(1, 5, (n, t)))
    y[:, t - 3 :] = -100  # padding / continuation sub-tokens
    return y


def test_token_classification_all_o_is_collapsed():
    """A NaN (or any) tagger that predicts O for every word is flagged, like the classification case."""
    y = _tags(np.random.default_rng(0))
    names = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
    rep = collapse_report("token_classification", np.zeros_like(y), y, {}, names=names)
    assert rep is not None and rep["collapsed"] is True
    assert any("predicts tag 'O' for 100.0% of words" in s for s in rep["symptoms"])
    assert any("tag macro-F1" in s for s in rep["symptoms"])
    assert (
        "\n" not in rep["message"]
        and "--epochs" in rep["message"]
        and "--class-weights" not in rep["message"]
    )
    # any single tag, not only O
    rep = collapse_report("token_classification", np.full_like(y, 3), y, names=names)
    assert rep is not None and "tag 'B-LOC' for 100.0%" in rep["message"]


def test_token_classification_good_and_all_o_gold_are_not_collapsed():
    rng = np.random.default_rng(1)
    y = _tags(rng)
    good = np.where(rng.random(y.shape) < 0.9, y, 0).clip(0)  # 90% of the words right
    good[y < 0] = 0  # what the model says at ignored positions does not count
    assert collapse_report("token_classification", good, y) is None
    all_o = np.where(y < 0, -100, 0)  # gold itself all O: predicting O is right
    assert collapse_report("token_classification", np.zeros_like(y), all_o) is None


# ---------------------------------------------------------------------------------------------
# small data, label distribution, class weights
# ---------------------------------------------------------------------------------------------


def test_small_data_warnings():
    assert small_data_warnings(500, {"a": 100, "b": 50}) == []
    w = small_data_warnings(76, {"fresh": 384, "rotten": 162, "plot": 12})
    assert len(w) == 2
    assert "76 optimizer steps" in w[0] and "--epochs" in w[0]
    assert "plot 12" in w[1] and "fresh" not in w[1] and "--class-weights auto" in w[1]
    assert small_data_warnings(99, None) and not small_data_warnings(100, None)
    assert small_data_warnings(100, {"x": 19}) and not small_data_warnings(100, {"x": 20})
    assert all("\n" not in line for line in w)


def test_label_distribution_and_imbalance():
    d = label_distribution(np.array([0, 0, 0, 1, 0, 1]), {0: "pos", 1: "neg", 2: "neu"})
    assert d["rows"] == 6
    assert d["counts"] == {"pos": 4, "neg": 2, "neu": 0}
    assert d["fractions"]["pos"] == pytest.approx(4 / 6)
    assert d["imbalance_ratio"] is None  # a class with 0 rows
    d = label_distribution([0, 0, 0, 1, 2, 2])
    assert d["counts"] == {"0": 3, "1": 1, "2": 2} and d["imbalance_ratio"] == 3.0
    ml = label_distribution(np.array([[1, 0], [1, 1], [1, 0]]), {0: "a", 1: "b"})
    assert ml["counts"] == {"a": 3, "b": 1} and ml["imbalance_ratio"] == 3.0
    assert imbalance_ratio([5, 10, 20]) == 4.0 and imbalance_ratio([]) is None


def test_class_weights_auto_is_sklearn_balanced():
    from sklearn.utils.class_weight import compute_class_weight

    counts = [384, 162, 54]
    y = np.repeat(np.arange(3), counts)
    ref = compute_class_weight("balanced", classes=np.arange(3), y=y)
    w = class_weights(counts, "auto")
    np.testing.assert_allclose(w, ref, rtol=1e-12)
    assert np.dot(counts, w) / sum(counts) == pytest.approx(1.0)  # average 1 over rows
    assert class_weights({"a": 10, "b": 10}, "AUTO") == [1.0, 1.0]
    # int-keyed dicts are read in id order whatever their insertion order
    assert class_weights({1: 30, 0: 10}, "auto") == pytest.approx([2.0, 2 / 3])
    assert class_weights(counts, "none") is None and class_weights(counts, None) is None


def test_class_weights_explicit_and_errors():
    assert class_weights([5, 5, 5], "1,2.5,4") == [1.0, 2.5, 4.0]
    assert class_weights([5, 0], "1,2") == [1.0, 2.0]  # explicit weights allow an empty class
    cases = [
        ([5, 5, 5], "1,2", "2 values but the data has 3 classes"),
        ([5, 5], "1,0", "finite and > 0"),
        ([5, 5], "1,-2", "finite and > 0"),
        ([5, 5], "1,nan", "finite and > 0"),
        ([5, 5], "1,inf", "finite and > 0"),
        ([5, 5], "balanced", "not auto, none or a comma-separated list"),
        ({"pos": 5, "neu": 0}, "auto", "class neu has no training rows"),
    ]
    for counts, spec, match in cases:
        with pytest.raises(ConfigError, match=match) as e:
            class_weights(counts, spec)
        assert "\n" not in str(e.value)


def test_class_weights_feed_torch_ce():
    """The weights are what torch's CE ``weight=`` expects: balanced classes contribute equally."""
    torch = pytest.importorskip("torch")
    counts = [60, 30, 10]
    y = torch.tensor(np.repeat(np.arange(3), counts))
    logits = torch.zeros(100, 3)
    w = torch.tensor(class_weights(counts, "auto"))
    per_class = [w[c] * counts[c] for c in range(3)]
    assert torch.allclose(torch.stack(per_class), per_class[0].expand(3))
    loss = torch.nn.functional.cross_entropy(logits, y, weight=w)
    assert loss.item() == pytest.approx(math.log(3), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# tie-break
# ---------------------------------------------------------------------------------------------


def test_better_first_and_strict_improvement():
    assert better((0.6, 1.0, 10), None, False) == Decision(True, True)
    assert better((0.7, 1.0, 20), (0.6, 0.9, 10), False) == Decision(True, True)
    assert better((0.5, 0.1, 20), (0.6, 0.9, 10), False) == Decision(False, False)
    # lower is better (loss / rmse)
    assert better((0.4, None, 20), (0.5, None, 10), True) == Decision(True, True)
    assert better((0.6, None, 20), (0.5, None, 10), True) == Decision(False, False)


def test_better_issue_case_tie_broken_by_loss_then_step():
    """Accuracy stuck at 0.6391 while the eval loss fell: the later, lower-loss evaluation is selected."""
    best = None
    for step, loss in ((19, 0.95), (38, 0.91), (57, 0.88), (76, 0.86)):
        d = better((0.6391, loss, step), best, False)
        assert d.select and (d.improved is (best is None))
        best = (0.6391, loss, step)
    assert best[2] == 76
    assert better((0.6391, 0.90, 95), (0.6391, 0.86, 76), False) == Decision(False, False)
    assert better((0.6391, 0.86, 95), (0.6391, 0.86, 76), False) == Decision(False, True)  # later step
    assert better((0.6391, None, 95), (0.6391, 0.86, 76), False) == Decision(False, True)
    # float noise in the metric counts as a tie
    assert better((0.1 + 0.2, 0.5, 2), (0.3, 0.6, 1), False) == Decision(False, True)


def test_better_min_delta_only_affects_patience():
    # better by less than min_delta: selected, but patience keeps counting
    assert better((0.605, 1.0, 20), (0.6, 0.5, 10), False, min_delta=0.01) == Decision(False, True)
    assert better((0.62, 1.0, 20), (0.6, 0.5, 10), False, min_delta=0.01) == Decision(True, True)
    # worse by less than min_delta: never selected (no downward drift of the best metric)
    assert better((0.595, 0.1, 20), (0.6, 0.5, 10), False, min_delta=0.01) == Decision(False, False)


def test_better_non_finite():
    assert better((float("nan"), 0.1, 20), (0.6, 0.5, 10), False) == Decision(False, False)
    assert better((None, 0.1, 20), None, False) == Decision(False, False)
    assert better((0.5, 0.1, 20), (float("nan"), 0.5, 10), False) == Decision(True, True)
    assert better((0.6, float("nan"), 20), (0.6, 0.5, 10), False) == Decision(False, True)


def test_tasks_collapse_check_is_their_own_diagnosis():
    """Each task's collapse_check hook gives what collapse_report gives for its problem type."""
    import torch

    from fastft.train.tasks import get_task

    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, size=200)
    stuck = np.tile([2.0, -2.0], (200, 1))  # always class 0
    rows = {"logits": torch.tensor(stuck), "labels": torch.tensor(y)}
    want = collapse_report(CLS, stuck, y, {})
    assert want is not None and get_task("classification").collapse_check(rows, {}) == want
    t = rng.normal(size=50)
    rows = {"logits": torch.zeros(50, 1), "labels": torch.tensor(t)}
    assert get_task("regression").collapse_check(rows, {}) == collapse_report("regression", np.zeros(50), t)
    tags = np.where(rng.random((4, 30)) < 0.5, 1, 0)
    rows = {"preds": torch.zeros(4, 30, dtype=torch.long), "labels": torch.tensor(tags)}
    names = {0: "O", 1: "B-X"}
    got = get_task("token_classification").collapse_check(rows, {}, names)
    assert got == collapse_report("token_classification", np.zeros((4, 30)), tags, {}, names=names)
    assert get_task("causal_lm").collapse_check(rows, {}) is None  # not checked
