"""Evaluation metrics, computed with scikit-learn; each task's ``metrics()`` calls its own function.

Each returns a JSON-serialisable dict (python floats, ``None`` where a metric is undefined, nested
lists for the confusion matrix) and raises ``ValueError`` on an empty evaluation set:

* :func:`classification_metrics` (single-label): logits (N, C), integer labels (N,). accuracy,
  f1_macro, f1_micro, precision_macro, recall_macro, auc_roc, confusion_matrix (C x C, rows = true, cols = predicted).
  auc_roc: binary (C == 2) = ROC-AUC of softmax p(class 1); C > 2 = one-vs-rest macro average of the
  per-class ROC-AUC of the softmax probabilities (equals ``roc_auc_score(..., multi_class="ovr")``
  when every class occurs). Classes that do not occur (or are the only one) in ``labels`` have no
  defined AUC and are left out of the average; ``None`` when no class has one.
* :func:`multilabel_metrics`: logits (N, C), 0/1 labels (N, C); prediction = logit > 0.
  accuracy (= subset accuracy, also as ``subset_accuracy``), f1_micro, f1_macro, precision_micro,
  recall_micro, hamming_loss, auc_roc (macro over labels with both classes present; else ``None``).
* :func:`regression_metrics`: predictions (N,) or (N, 1), float labels. mae, mse, rmse, pearson
  (``None`` when either side is constant), r2.
``perplexity(mean_loss)`` = exp(mean token NLL) for causal LM (inf on overflow).

Non-finite outputs (a diverged model) never raise: a NaN/inf output counts as wrong (classification: a
wrong class, the worst AUC score, left out of the confusion matrix; regression: an infinite error, so
mae/mse/rmse are ``inf``), and ``nonfinite_rows`` (only present when > 0) says how many rows had one.
"""

from __future__ import annotations

import math

import numpy as np

from fastft.train.numerics import binary_auc, macro_auc, sigmoid, softmax

__all__ = ["classification_metrics", "multilabel_metrics", "regression_metrics", "perplexity"]


def perplexity(mean_loss: float) -> float:
    """exp(mean per-token cross-entropy in nats); ``inf`` when it overflows."""
    try:
        return float(math.exp(float(mean_loss)))
    except OverflowError:
        return float("inf")


def _arrays(logits, labels) -> tuple[np.ndarray, np.ndarray]:
    logits, labels = np.asarray(logits), np.asarray(labels)
    if len(logits) == 0:
        raise ValueError("no predictions to score (empty evaluation set)")
    return logits, labels


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Single-label classification metrics of logits (N, C) against integer labels (N,)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score

    logits, labels = _arrays(logits, labels)
    if logits.ndim != 2:
        raise ValueError(f"classification logits must be (N, num_labels), got shape {logits.shape}")
    n_classes = logits.shape[1]
    labels = labels.reshape(-1).astype(np.int64)
    logits = logits.astype(np.float64)
    bad = ~np.isfinite(logits).all(axis=1)  # a diverged model's NaN/inf rows: each counts as wrong
    preds = logits.argmax(axis=-1)
    preds[bad] = (labels[bad] + 1) % n_classes
    classes = list(range(n_classes))
    onehot = labels[:, None] == np.arange(n_classes)[None, :]
    probs = softmax(np.where(bad[:, None], 0.0, logits))
    probs[bad] = np.where(onehot[bad], 0.0, 1.0)  # the worst score for its label: ranked wrong in the AUC
    if n_classes == 2:
        auc = binary_auc(labels == 1, probs[:, 1])
    else:
        auc = macro_auc(onehot, probs)
    cm_preds = np.where(bad, -1, preds)  # no real prediction: left out of the confusion matrix
    out = {
        "accuracy": float(accuracy_score(labels, preds)),
        "f1_macro": float(f1_score(labels, preds, average="macro", labels=classes, zero_division=0)),
        "f1_micro": float(f1_score(labels, preds, average="micro", labels=classes, zero_division=0)),
        "precision_macro": float(
            precision_score(labels, preds, average="macro", labels=classes, zero_division=0)
        ),
        "recall_macro": float(recall_score(labels, preds, average="macro", labels=classes, zero_division=0)),
        "auc_roc": auc,
        "confusion_matrix": confusion_matrix(labels, cm_preds, labels=classes).tolist(),
    }
    return _note_nonfinite(out, bad)


def _note_nonfinite(out: dict, bad: np.ndarray) -> dict:
    """Add ``nonfinite_rows`` (only when there are any) so a diverged model's numbers explain themselves."""
    n = int(np.count_nonzero(bad.reshape(len(bad), -1).any(axis=1)))
    if n:
        out["nonfinite_rows"] = n
    return out


def multilabel_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Multi-label metrics of logits (N, C) against 0/1 labels (N, C); a label is predicted at logit > 0."""
    from sklearn.metrics import accuracy_score, f1_score, hamming_loss, precision_score, recall_score

    logits, labels = _arrays(logits, labels)

    if logits.ndim != 2 or labels.shape != logits.shape:
        raise ValueError(
            f"multi-label logits and labels must both be (N, num_labels), got {logits.shape} and {labels.shape}"
        )
    y = (labels > 0.5).astype(np.int64)
    logits = logits.astype(np.float64)
    bad = ~np.isfinite(logits)  # a diverged model's NaN/inf outputs: each counts as wrong
    preds = (logits > 0).astype(np.int64)
    preds[bad] = 1 - y[bad]
    scores = sigmoid(np.where(bad, 0.0, logits))
    scores[bad] = 1.0 - y[bad]  # the worst score: ranked wrong in the AUC
    acc = float(accuracy_score(y, preds))
    out = {
        "accuracy": acc,
        "subset_accuracy": acc,
        "f1_micro": float(f1_score(y, preds, average="micro", zero_division=0)),
        "f1_macro": float(f1_score(y, preds, average="macro", zero_division=0)),
        "precision_micro": float(precision_score(y, preds, average="micro", zero_division=0)),
        "recall_micro": float(recall_score(y, preds, average="micro", zero_division=0)),
        "hamming_loss": float(hamming_loss(y, preds)),
        "auc_roc": macro_auc(y.astype(bool), scores),
    }
    return _note_nonfinite(out, bad)


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def regression_metrics(preds: np.ndarray, labels: np.ndarray) -> dict:
    """Regression metrics of predictions (N,) or (N, 1) against float labels (N,)."""
    preds, labels = _arrays(preds, labels)
    preds = preds.reshape(-1).astype(np.float64)
    labels = labels.reshape(-1).astype(np.float64)
    if preds.shape != labels.shape:
        raise ValueError(f"regression predictions and labels differ in size: {preds.shape} vs {labels.shape}")
    # numpy, not sklearn (which raises on NaN/inf): a NaN/inf prediction or label, or an error too large
    # for float64 (1e308 - -1e308), is infinitely wrong, so mae/mse/rmse are inf and r2 -inf, not a crash
    with np.errstate(over="ignore", invalid="ignore"):
        err = preds - labels
        err[~np.isfinite(err)] = np.inf
        mse = float(np.mean(err**2))
        mae = float(np.mean(np.abs(err)))
        finite = bool(np.isfinite(preds).all() and np.isfinite(labels).all())
        p_std, l_std = float(preds.std()), float(labels.std())
        pearson = None
        if finite and len(preds) > 1 and p_std > 0 and l_std > 0:
            pearson = _finite(np.corrcoef(preds, labels)[0, 1])
        r2 = None
        if len(preds) > 1 and l_std > 0:  # sklearn's r2_score: 1 - SS_res / SS_tot
            ss_tot = float(np.sum((labels - labels.mean()) ** 2))
            r2 = float(1.0 - np.sum(err**2) / ss_tot) if 0 < ss_tot < math.inf else None
    return _note_nonfinite(
        {"mae": mae, "mse": mse, "rmse": math.sqrt(mse), "pearson": pearson, "r2": r2},
        ~np.isfinite(preds),
    )
