"""Small numpy numerics shared by the metrics, the diagnosis and the tasks: written once here.

Arrays are ``(N, C)`` scores/logits over the last axis unless a docstring says otherwise.
"""

from __future__ import annotations

import numpy as np

__all__ = ["IGNORE_INDEX", "softmax", "sigmoid", "binary_auc", "macro_auc"]

#: the label value that no loss or metric counts (the Hugging Face / PyTorch convention).
IGNORE_INDEX = -100


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, shifted by the row max so that large logits do not overflow."""
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function written through tanh: no overflow warning for large ``|x|``."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def binary_auc(y: np.ndarray, score: np.ndarray) -> float | None:
    """ROC-AUC of ``score`` (N,) for the boolean targets ``y`` (N,); None when ``y`` holds a single
    class (where sklearn would raise). sklearn is already loaded by the per-evaluation metrics."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y).astype(bool)
    if y.all() or not y.any():
        return None
    return float(roc_auc_score(y, score))


def macro_auc(y_onehot: np.ndarray, scores: np.ndarray) -> float | None:
    """Mean one-vs-rest AUC over the columns of ``y_onehot`` (N, C) that hold both classes."""
    aucs = [binary_auc(y_onehot[:, c], scores[:, c]) for c in range(scores.shape[1])]
    aucs = [a for a in aucs if a is not None]
    return float(np.mean(aucs)) if aucs else None
