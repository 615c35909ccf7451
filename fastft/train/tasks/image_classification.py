"""Image classification (``--task image_classification``) and its multi-label variant (``image_multilabel``).

Rows: an image (an image folder's files, or an image-path / HF ``Image`` column) and a label (the
sub-folder name, or a label column); list labels (or ``--task image_multilabel`` with ``a;b`` strings)
train multi-label. Model: ``AutoModelForImageClassification`` with its ``AutoImageProcessor`` (resize
+ normalise); a checkpoint head with another label count is re-initialised. Loss, labels and metrics
are those of text classification / multi-label (fused CE through ``fastft.functional``). Predict:
the top-k labels with their probabilities per image (``--top-k``). Evaluation writes a confusion
matrix PNG (up to 30 classes).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from fastft.train.numerics import softmax
from fastft.train.tasks.base import model_inputs
from fastft.train.tasks.classification import Classification
from fastft.train.tasks.multilabel import MultiLabel

__all__ = ["ImageClassification", "ImageMultiLabel", "IMAGE_MULTILABEL", "top_k_fields", "plot_confusion"]

#: confusion matrices are drawn up to this many classes (beyond, the cells are unreadable).
MAX_CONFUSION_CLASSES = 30


def _is_image_model(config) -> bool:
    archs = getattr(config, "architectures", None) or []
    return any(a.endswith("ForImageClassification") for a in archs)


def top_k_fields(probs: np.ndarray, names: list[str], k: int) -> dict[str, Any]:
    """``label_1, prob_1, ..., label_k, prob_k`` (highest first) of one row's probabilities."""
    order = np.argsort(-probs, kind="stable")[: max(1, min(k, len(names)))]
    out: dict[str, Any] = {}
    for j, i in enumerate(order, 1):
        out[f"label_{j}"] = names[i]
        out[f"prob_{j}"] = round(float(probs[i]), 6)
    return out


def _image_predict(task, model, ds, batches, device, options, prob_fn) -> list[dict]:
    k = int(getattr(options, "top_k", None) or 5)
    logits = []
    with torch.no_grad():
        for batch in batches:
            inputs = {n: v.to(device) for n, v in model_inputs(batch).items()}
            logits.append(model(**inputs).logits.float().cpu())
    out = torch.cat(logits).numpy()
    id2label = {int(i): v for i, v in (getattr(model.config, "id2label", None) or {}).items()}
    names = [str(id2label.get(i, i)) for i in range(out.shape[-1])]
    shown = ds["image"] if "image" in ds.column_names else [str(i) for i in range(len(ds))]
    records = []
    for i in range(len(ds)):
        probs = prob_fn(out[i])
        rec: dict[str, Any] = {"image": shown[i], **task.prediction_fields(out[i], id2label)}
        rec.update(top_k_fields(probs, names, k))
        records.append(rec)
    return records


def plot_confusion(matrix: list[list[int]], names: list[str], path: str, title: str) -> bool:
    """A confusion-matrix PNG (rows = true, columns = predicted); False when there are too many classes."""
    if not matrix or len(matrix) > MAX_CONFUSION_CLASSES:
        return False
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    m = np.asarray(matrix)
    n = len(m)
    fig, ax = plt.subplots(figsize=(2 + 0.45 * n, 1.6 + 0.45 * n))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(n), [str(x) for x in names[:n]], rotation=90, fontsize=7)
    ax.set_yticks(range(n), [str(x) for x in names[:n]], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    top = m.max() if m.size else 0
    for r in range(n):
        for c in range(n):
            ax.text(c, r, int(m[r, c]), ha="center", va="center", fontsize=6,
                    color="white" if m[r, c] > top / 2 else "black")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


class _ImageRows:
    """What both image tasks share: the model class, the image batches, and top-k prediction."""

    auto_class = "AutoModelForImageClassification"
    modality = "image"
    batch_columns = ("image_ref",)

    def detects(self, labels, texts):
        return False  # chosen by --task (or an image folder as --train-file), never from labels

    @staticmethod
    def probs(logits: np.ndarray) -> np.ndarray:
        return softmax(logits)

    def predict(self, model, tokenizer, ds, batches, *, device, text_columns, options):
        return _image_predict(self, model, ds, batches, device, options, self.probs)


class ImageClassification(_ImageRows, Classification):
    name = "image_classification"
    aliases = ("image-classification", "image_single_label")

    def claims_model(self, config):
        return _is_image_model(config) and getattr(config, "problem_type", None) != MultiLabel.problem_type

    def refine(self, labels):
        if any(isinstance(v, (list, tuple, np.ndarray)) for v in labels):
            return IMAGE_MULTILABEL  # the registry's instance (a task is one shared instance)
        return self

    def describe(self, space):
        return f"image classification, {space.num_labels} labels"

    def artifacts(self, metrics, model, out_dir):
        cm = metrics.get("confusion_matrix")
        id2label = {int(k): v for k, v in (getattr(model.config, "id2label", None) or {}).items()}
        names = [str(id2label.get(i, i)) for i in range(len(cm or []))]
        path = os.path.join(out_dir, "confusion_matrix.png")
        return ["confusion_matrix.png"] if cm and plot_confusion(cm, names, path, "confusion matrix") else []


class ImageMultiLabel(_ImageRows, MultiLabel):
    name = "image_multilabel"
    aliases = ("image_multi_label", "image-multilabel")

    @staticmethod
    def probs(logits: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-logits))  # independent sigmoids

    def claims_model(self, config):
        return _is_image_model(config) and getattr(config, "problem_type", None) == self.problem_type

    def describe(self, space):
        return f"image multi-label classification, {space.num_labels} labels"


#: The one instance of the multi-label variant: the registry lists it, ``refine`` returns it.
IMAGE_MULTILABEL = ImageMultiLabel()
