"""Run diagnostics: models that learned nothing, too little data, class imbalance, checkpoint ties.

Numpy (AUC: :mod:`fastft.train.numerics`); the trainer calls these after each evaluation, at
start-up and at the end; each task's ``collapse_check`` calls its own ``*_collapse`` check.

* :func:`collapse_report` -- does an evaluation look like a model that learned nothing (one class
  predicted for >= 99% of rows, AUC within 0.05 of chance, macro-F1 no better than a constant
  predictor, constant regression outputs, one tag for >= 99% of words)? Returns the symptoms and one
  plain warning line.
* :func:`small_data_warnings` -- fewer than ~100 optimizer steps, or fewer than ~20 rows in a class.
* :func:`class_weights` -- the per-class CE weights of ``--class-weights auto|none|w1,w2,...``.
* :func:`label_distribution` / :func:`imbalance_ratio` -- the start-up label report.
* :func:`better` -- checkpoint selection with the tie-break "metric, then lower eval loss, then later
  step", and separately whether the evaluation counts as an improvement for early-stopping patience.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from fastft.train.errors import ConfigError
from fastft.train.numerics import binary_auc, macro_auc, sigmoid, softmax

__all__ = [
    "COLLAPSE_MAJORITY_FRACTION",
    "COLLAPSE_AUC_MARGIN",
    "COLLAPSE_CHECKS",
    "MIN_OPTIMIZER_STEPS",
    "MIN_ROWS_PER_CLASS",
    "Decision",
    "better",
    "class_weights",
    "resolve_class_weights",
    "STRONG_IMBALANCE",
    "collapse_report",
    "classification_collapse",
    "multilabel_collapse",
    "regression_collapse",
    "token_collapse",
    "constant_macro_f1",
    "imbalance_ratio",
    "label_distribution",
    "macro_f1",
    "small_data_warnings",
]

COLLAPSE_MAJORITY_FRACTION = 0.99  # one class predicted for at least this share of rows
COLLAPSE_AUC_MARGIN = 0.05  # |AUC - 0.5| <= this: ranking no better than chance
REGRESSION_STD_FRACTION = 0.01  # std(predictions) < this * std(labels): constant outputs
MIN_OPTIMIZER_STEPS = 100
MIN_ROWS_PER_CLASS = 20
_F1_TOL = 1e-9

_FIXES_CLS = (
    "train longer (more --epochs or --max-steps), try a lower or a higher --lr, or --class-weights auto"
)
_FIXES_TOK = "train longer (more --epochs or --max-steps), or try a lower or a higher --lr"
_FIXES_REG = "train longer (more --epochs or --max-steps), try a lower or a higher --lr, or scale the labels"


# --------------------------------------------------------------------------------------------
# small numpy metrics
# --------------------------------------------------------------------------------------------


def _is_probs(x: np.ndarray, rows_sum_to_one: bool) -> bool:
    if x.size == 0 or x.min() < 0.0 or x.max() > 1.0:
        return False
    return not rows_sum_to_one or bool(np.allclose(x.sum(-1), 1.0, atol=1e-4))


def macro_f1(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> float:
    """Macro-F1 over classes ``0..num_classes-1``; a class with no true and no predicted rows scores 0
    (sklearn's ``f1_score(average="macro", labels=range(k), zero_division=0)``)."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    f1 = []
    for c in range(num_classes):
        tp = float(np.sum((preds == c) & (labels == c)))
        denom = float(np.sum(preds == c) + np.sum(labels == c))  # 2tp + fp + fn
        f1.append(2.0 * tp / denom if denom > 0 else 0.0)
    return float(np.mean(f1)) if f1 else 0.0


def constant_macro_f1(labels: np.ndarray, num_classes: int) -> float:
    """Best macro-F1 of a predictor that outputs one class for every row.

    Predicting class c everywhere gives class c precision p_c (its share of rows) and recall 1, so
    F1_c = 2 p_c / (1 + p_c), and every other class F1 = 0: macro-F1 = max_c 2 p_c / (1 + p_c) / k,
    reached by the majority class.
    """
    labels = np.asarray(labels)
    if len(labels) == 0 or num_classes <= 0:
        return 0.0
    p = np.bincount(labels.astype(np.int64), minlength=num_classes)[:num_classes] / len(labels)
    return float(np.max(2.0 * p / (1.0 + p)) / num_classes)


# --------------------------------------------------------------------------------------------
# collapse
# --------------------------------------------------------------------------------------------


def collapse_report(
    problem_type: str,
    logits_or_probs: Any,
    labels: Any,
    metrics: Mapping[str, Any] | None = None,
    names: Mapping[int, str] | None = None,
) -> dict[str, Any] | None:
    """Diagnose an evaluation that looks like a model that learned nothing; None when it looks fine.

    ``problem_type``: ``single_label_classification`` (or ``classification``),
    ``multi_label_classification`` (or ``multilabel``), ``regression``, ``causal_lm`` (never collapsed
    here: there is no per-row prediction to judge). ``logits_or_probs``: (N, C) logits or
    probabilities (rows summing to 1 in [0, 1] are taken as probabilities, multilabel values all in
    [0, 1] as sigmoid probabilities thresholded at 0.5, else logits thresholded at 0); regression (N,)
    or (N, 1) predictions. ``metrics``: what the task's metrics (:mod:`fastft.train.metrics`) returned for
    the same rows; its ``auc_roc`` / ``r2`` are used when present so the warning quotes the logged
    numbers. Rows whose label is negative (ignore index) are dropped.

    Symptoms, classification: the most predicted class covers >= 99% of rows; AUC (binary, or macro
    one-vs-rest) within 0.05 of 0.5; macro-F1 no better than the best constant predictor's
    (:func:`constant_macro_f1`). Multilabel: one label set (e.g. the empty set) predicted for >= 99%
    of rows; macro AUC within 0.05 of 0.5. Regression: std of predictions < 1% of the labels' std;
    R^2 <= 0 (no better than predicting the label mean). Token classification: ``logits_or_probs`` are
    the (N, T) predicted tag ids, ``labels`` (N, T) with -100 where no word starts; one tag (e.g. ``O``)
    predicted for >= 99% of words while the labels give it to fewer; tag macro-F1 no better than the
    best constant tagger's. ``names``: tag id -> name, for the message.

    Returns ``{"collapsed": True, "symptoms": [...], "message": "<one line>", "details": {...}}``.
    """
    if problem_type == "causal_lm":
        return None
    check = COLLAPSE_CHECKS.get(problem_type)
    if check is None:
        raise ValueError(
            f"unknown problem_type {problem_type!r}: use single_label_classification, "
            "multi_label_classification, regression, token_classification or causal_lm"
        )
    return check(logits_or_probs, labels, metrics, names)


def classification_collapse(
    scores: Any, labels: Any, metrics: Mapping[str, Any] | None = None, names: Mapping[int, str] | None = None
) -> dict[str, Any] | None:
    """:func:`collapse_report` of a single-label classification: ``scores`` (N, C) logits or
    probabilities, ``labels`` (N,) class ids (negative: ignored)."""
    return _collapse(_classification_symptoms, _FIXES_CLS, scores, labels, metrics)


def multilabel_collapse(
    scores: Any, labels: Any, metrics: Mapping[str, Any] | None = None, names: Mapping[int, str] | None = None
) -> dict[str, Any] | None:
    """:func:`collapse_report` of a multi-label classification: ``scores`` (N, L) logits or sigmoid
    probabilities, ``labels`` (N, L) 0/1."""
    return _collapse(_multilabel_symptoms, _FIXES_CLS, scores, labels, metrics)


def regression_collapse(
    scores: Any, labels: Any, metrics: Mapping[str, Any] | None = None, names: Mapping[int, str] | None = None
) -> dict[str, Any] | None:
    """:func:`collapse_report` of a regression: ``scores`` (N,) or (N, 1) predictions, ``labels`` (N,)."""
    return _collapse(_regression_symptoms, _FIXES_REG, scores, labels, metrics)


def token_collapse(
    scores: Any, labels: Any, metrics: Mapping[str, Any] | None = None, names: Mapping[int, str] | None = None
) -> dict[str, Any] | None:
    """:func:`collapse_report` of a token classification: ``scores`` (N, T) predicted tag ids,
    ``labels`` (N, T) with -100 where no word starts; ``names`` tag id -> name."""
    return _collapse(lambda x, y, _m: _token_symptoms(x, y, names or {}), _FIXES_TOK, scores, labels, metrics)


def _collapse(symptoms_of, fixes: str, scores: Any, labels: Any, metrics) -> dict[str, Any] | None:
    """The report (or None) from one kind's symptom finder ``symptoms_of(x, y, metrics)``."""
    x = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if len(x) == 0:
        return None
    symptoms, details = symptoms_of(x, y, dict(metrics or {}))
    if not symptoms:
        return None
    message = f"warning: the model looks collapsed ({'; '.join(symptoms)}); likely fixes: {fixes}"
    return {"collapsed": True, "symptoms": symptoms, "message": message, "details": details}


def _classification_symptoms(x: np.ndarray, y: np.ndarray, metrics: dict) -> tuple[list[str], dict]:
    if x.ndim != 2:
        raise ValueError(f"classification scores must be (N, C), got shape {x.shape}")
    keep = y.astype(np.int64) >= 0
    x, y = x[keep], y[keep].astype(np.int64)
    if len(y) == 0:
        return [], {}
    k = x.shape[1]
    preds = x.argmax(-1)
    counts = np.bincount(preds, minlength=k)
    top = int(counts.argmax())
    share = float(counts[top] / len(preds))
    symptoms: list[str] = []
    if share >= COLLAPSE_MAJORITY_FRACTION:
        symptoms.append(f"predicts class {top} for {share:.1%} of rows")
    auc = metrics.get("auc_roc")
    if auc is None:
        probs = x if _is_probs(x, rows_sum_to_one=True) else softmax(x)
        auc = binary_auc(y == 1, probs[:, 1]) if k == 2 else macro_auc(y[:, None] == np.arange(k), probs)
    if auc is not None and abs(float(auc) - 0.5) <= COLLAPSE_AUC_MARGIN:
        symptoms.append(f"AUC {float(auc):.3f} is within {COLLAPSE_AUC_MARGIN} of chance")
    f1 = macro_f1(y, preds, k)
    const = constant_macro_f1(y, k)
    if f1 <= const + _F1_TOL:
        symptoms.append(
            f"macro-F1 {f1:.3f} is no better than always predicting the majority class ({const:.3f})"
        )
    details = {
        "top_class": top,
        "top_class_fraction": share,
        "auc": auc,
        "f1_macro": f1,
        "constant_f1_macro": const,
    }
    return symptoms, details


def _multilabel_symptoms(x: np.ndarray, y: np.ndarray, metrics: dict) -> tuple[list[str], dict]:
    if x.ndim != 2:
        raise ValueError(f"multilabel scores must be (N, L), got shape {x.shape}")
    probs = _is_probs(x, rows_sum_to_one=False)
    preds = x > (0.5 if probs else 0.0)
    _, inverse, counts = np.unique(preds, axis=0, return_inverse=True, return_counts=True)
    top = int(counts.argmax())
    share = float(counts[top] / len(preds))
    top_set = preds[np.flatnonzero(np.asarray(inverse).reshape(-1) == top)[0]]
    symptoms: list[str] = []
    if share >= COLLAPSE_MAJORITY_FRACTION:
        what = "no label" if not top_set.any() else f"the same labels {np.flatnonzero(top_set).tolist()}"
        symptoms.append(f"predicts {what} for {share:.1%} of rows")
    auc = metrics.get("auc_roc")
    if auc is None and y.shape == x.shape:
        scores = x if probs else sigmoid(x)
        auc = macro_auc(y.astype(bool), scores)
    if auc is not None and abs(float(auc) - 0.5) <= COLLAPSE_AUC_MARGIN:
        symptoms.append(f"AUC {float(auc):.3f} is within {COLLAPSE_AUC_MARGIN} of chance")
    return symptoms, {"top_set_fraction": share, "top_set": np.flatnonzero(top_set).tolist(), "auc": auc}


def _token_symptoms(x: np.ndarray, y: np.ndarray, names: Mapping[int, str]) -> tuple[list[str], dict]:
    if x.shape != y.shape:
        raise ValueError(f"token predictions {x.shape} and labels {y.shape} differ in shape")
    keep = y.astype(np.int64) >= 0  # each word's first sub-token
    preds, y = x[keep].astype(np.int64).clip(0), y[keep].astype(np.int64)
    if len(y) == 0:
        return [], {}
    k = int(max(preds.max(), y.max(), max(names, default=0))) + 1
    counts = np.bincount(preds, minlength=k)
    top = int(counts.argmax())
    share, gold_share = float(counts[top] / len(preds)), float(np.mean(y == top))
    tag = str(names.get(top, top))
    symptoms: list[str] = []
    # a tag the labels also give to >= 99% of words is the right answer, not a collapse
    if share >= COLLAPSE_MAJORITY_FRACTION and gold_share < COLLAPSE_MAJORITY_FRACTION:
        symptoms.append(f"predicts tag {tag!r} for {share:.1%} of words, the labels for {gold_share:.1%}")
    f1, const = macro_f1(y, preds, k), constant_macro_f1(y, k)
    if f1 <= const + _F1_TOL and len(np.unique(y)) > 1:
        symptoms.append(
            f"tag macro-F1 {f1:.3f} is no better than always predicting the majority tag ({const:.3f})"
        )
    details = {"top_tag": tag, "top_tag_fraction": share, "f1_macro": f1, "constant_f1_macro": const}
    return symptoms, details


def _regression_symptoms(x: np.ndarray, y: np.ndarray, metrics: dict) -> tuple[list[str], dict]:
    p = x.reshape(-1)
    t = y.astype(np.float64).reshape(-1)
    if p.shape != t.shape or len(t) < 2:
        return [], {}
    label_std, pred_std = float(t.std()), float(p.std())
    if label_std == 0.0:
        return [], {"label_std": 0.0}
    symptoms: list[str] = []
    if pred_std < REGRESSION_STD_FRACTION * label_std:
        symptoms.append(
            f"predictions are nearly constant (std {pred_std:.3g} < 1% of the labels' std {label_std:.3g})"
        )
    r2 = metrics.get("r2")
    if r2 is None:
        r2 = 1.0 - float(np.sum((t - p) ** 2)) / float(np.sum((t - t.mean()) ** 2))
    if float(r2) <= 0.0:
        symptoms.append(f"R^2 {float(r2):.3f} <= 0: no better than predicting the mean label")
    return symptoms, {"pred_std": pred_std, "label_std": label_std, "r2": float(r2)}


#: the collapse check of each diagnosis kind (a task's ``collapse_kind``), also by the Hugging Face
#: problem-type names that :func:`collapse_report` accepts.
COLLAPSE_CHECKS = {
    "single_label_classification": classification_collapse,
    "classification": classification_collapse,
    "multi_label_classification": multilabel_collapse,
    "multilabel": multilabel_collapse,
    "regression": regression_collapse,
    "token_classification": token_collapse,
}


# --------------------------------------------------------------------------------------------
# small data, labels, class weights
# --------------------------------------------------------------------------------------------


def small_data_warnings(n_optimizer_steps: int, label_counts: Mapping[Any, int] | None) -> list[str]:
    """Start-up warnings (one line each) for a run too short or a class too small to learn.

    ``label_counts``: training rows per class name (positives per label for multilabel); None for
    regression / causal LM. Thresholds: :data:`MIN_OPTIMIZER_STEPS`, :data:`MIN_ROWS_PER_CLASS`.
    """
    out = []
    if n_optimizer_steps < MIN_OPTIMIZER_STEPS:
        out.append(
            f"warning: this run takes only {n_optimizer_steps} optimizer steps (fewer than ~{MIN_OPTIMIZER_STEPS}),"
            " too few to learn reliably; use more --epochs or --max-steps, or a smaller --batch-size"
        )
    if label_counts:
        small = {str(k): int(v) for k, v in label_counts.items() if int(v) < MIN_ROWS_PER_CLASS}
        if small:
            listed = ", ".join(f"{k} {v}" for k, v in small.items())
            out.append(
                f"warning: few training rows per class ({listed}; fewer than ~{MIN_ROWS_PER_CLASS}), so these "
                "classes may never be predicted; add rows for them, or use --class-weights auto"
            )
    return out


def label_distribution(label_ids: Any, id2label: Mapping[int, str] | None = None) -> dict[str, Any]:
    """Rows per class: ``{"rows", "counts", "fractions", "imbalance_ratio"}`` keyed by class name.

    ``label_ids``: (N,) class ids, or (N, L) multi-hot rows (counts = positives per label).
    ``id2label``: id -> name (default: the ids as strings); classes without rows are listed with 0.
    """
    y = np.asarray(label_ids)
    if y.ndim == 2:
        counts = y.astype(np.int64).sum(0)
        k = y.shape[1]
    else:
        y = y.astype(np.int64)
        y = y[y >= 0]
        k = max(len(id2label) if id2label else 0, int(y.max()) + 1 if len(y) else 0)
        counts = np.bincount(y, minlength=k)
    names = [str(id2label[i]) if id2label and i in id2label else str(i) for i in range(k)]
    total = int(len(label_ids))
    by_name = {n: int(c) for n, c in zip(names, counts, strict=True)}
    return {
        "rows": total,
        "counts": by_name,
        "fractions": {n: (c / total if total else 0.0) for n, c in by_name.items()},
        "imbalance_ratio": imbalance_ratio(by_name),
    }


def imbalance_ratio(counts: Mapping[Any, int] | Sequence[int]) -> float | None:
    """Largest class count / smallest; None when a class has no rows (or there are none)."""
    vals = list(counts.values()) if isinstance(counts, Mapping) else list(counts)
    if not vals or min(vals) <= 0:
        return None
    return float(max(vals) / min(vals))


#: ``--class-weights imbalanced`` means ``auto`` from this largest/smallest class ratio on (and with the
#: default ``none``, the start-up report suggests weights from this ratio on).
STRONG_IMBALANCE = 3.0


def resolve_class_weights(spec: str | None, ratio: float | None) -> str:
    """``imbalanced`` -> ``auto`` when the training classes' largest/smallest ratio is at least
    :data:`STRONG_IMBALANCE`, else ``none`` (also when a class has no rows: ``ratio`` None); any other
    spec is returned as it is (lower-cased)."""
    s = (spec or "none").strip().lower()
    if s != "imbalanced":
        return s
    return "auto" if ratio is not None and ratio >= STRONG_IMBALANCE else "none"


def class_weights(label_counts: Mapping[Any, int] | Sequence[int], spec: str | None) -> list[float] | None:
    """Per-class CE weights for ``--class-weights auto|none|w1,w2,...``; None means unweighted.

    ``label_counts``: training rows per class in class-id order (a dict is read in id order when its
    keys are ints, else in insertion order). ``auto``: sklearn's ``class_weight="balanced"``,
    w_c = n / (k * n_c), so the weights average 1 over the training rows (sum_c n_c w_c / n = 1) and a
    balanced set gets all-ones. ``w1,w2,...``: explicit weights, one per class, finite and > 0.
    Raises :class:`fastft.train.errors.ConfigError` with one line naming the fix.
    """
    if isinstance(label_counts, Mapping):
        keys = list(label_counts)
        if all(isinstance(k, (int, np.integer)) for k in keys):
            keys = sorted(keys)
        names, counts = [str(k) for k in keys], [int(label_counts[k]) for k in keys]
    else:
        counts = [int(c) for c in label_counts]
        names = [str(i) for i in range(len(counts))]
    s = (spec or "none").strip().lower()
    if s == "none":
        return None
    k = len(counts)
    if s == "auto":
        empty = [n for n, c in zip(names, counts, strict=True) if c <= 0]
        if empty:
            raise ConfigError(
                f"--class-weights auto: class {', '.join(empty)} has no training rows; add rows for it, "
                "or pass explicit weights --class-weights w1,w2,..."
            )
        n = sum(counts)
        return [n / (k * c) for c in counts]
    try:
        weights = [float(v) for v in s.split(",")]
    except ValueError:
        raise ConfigError(
            f"--class-weights {spec!r} is not auto, none or a comma-separated list of numbers like 1,2.5,4"
        ) from None
    if len(weights) != k:
        raise ConfigError(
            f"--class-weights has {len(weights)} values but the data has {k} classes ({', '.join(names)}); "
            f"give {k} weights in class-id order, or use auto"
        )
    bad = [v for v in weights if not (math.isfinite(v) and v > 0)]
    if bad:
        raise ConfigError(
            f"--class-weights must all be finite and > 0 (got {bad[0]}); fix the list, or use auto"
        )
    return weights


# --------------------------------------------------------------------------------------------
# checkpoint selection
# --------------------------------------------------------------------------------------------


class Decision(NamedTuple):
    """``improved``: counts as an improvement for early stopping (better by more than min_delta);
    ``select``: becomes the best checkpoint (see :func:`better`)."""

    improved: bool
    select: bool


def better(
    new: tuple[float | None, float | None, int],
    best: tuple[float | None, float | None, int] | None,
    lower_is_better: bool,
    min_delta: float = 0.0,
) -> Decision:
    """Compare an evaluation ``(metric, eval_loss, step)`` with the best so far.

    * ``improved`` (early-stopping patience): the metric is better than the best's by more than
      ``min_delta`` -- patience keeps counting "no improvement > min_delta" as before.
    * ``select`` (best checkpoint): the evaluations are ranked by the metric; on an exact tie of the
      metric (equal up to float rounding: rel 1e-9) the lower eval loss wins, and on a tie of that
      too (or a loss missing) the later step wins. ``min_delta`` does not apply to selection: a metric
      better by less than it is still selected (it just does not reset patience), and a worse metric is
      never selected, so the best checkpoint's metric never goes down.

    A non-finite or missing new metric never wins; a finite one always beats a non-finite best.
    """
    metric, loss, step = new
    if metric is None or not math.isfinite(float(metric)):
        return Decision(False, False)
    if best is None or best[0] is None or not math.isfinite(float(best[0])):
        return Decision(True, True)
    b_metric, b_loss, b_step = best
    gain = (b_metric - metric) if lower_is_better else (metric - b_metric)
    improved = gain > min_delta
    if math.isclose(metric, b_metric, rel_tol=1e-9, abs_tol=1e-12):
        improved = False  # a tie is no improvement, whatever min_delta
        if loss is not None and b_loss is not None and math.isfinite(loss) and math.isfinite(b_loss):
            if not math.isclose(loss, b_loss, rel_tol=1e-12, abs_tol=0.0):
                return Decision(improved, loss < b_loss)
        return Decision(improved, step > b_step)
    return Decision(improved, gain > 0)
