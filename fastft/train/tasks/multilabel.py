"""Multi-label classification (``--task multilabel``): any subset of the labels per row.

Columns: text (+ pair) and a label column of lists (JSON/parquet; auto-detected) or, with
``--task multilabel``, strings split on ``,``/``;``/``|`` (``"['a', 'b']"`` is parsed as a literal).
Labels: sorted names -> multi-hot float vectors (``[]`` = no label). Loss: binary cross-entropy
with logits, per item the mean over its labels. Metrics: subset accuracy, micro/macro F1,
Hamming loss, ROC-AUC; best by ``f1_micro``. Predict: the labels with p > 0.5 and one
probability column per label.
"""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F

from fastft.train.tasks import labels as L
from fastft.train.tasks.base import LabelSpace, Task


class MultiLabel(Task):
    name = "multilabel"
    aliases = ("multi_label", "multi_label_classification")
    problem_type = "multi_label_classification"
    collapse_kind = "multilabel"
    named_labels = True
    best_metric = "f1_micro"
    lower_is_better = ("loss", "hamming_loss")

    def detects(self, labels, texts):
        return any(isinstance(v, (list, tuple, np.ndarray)) for v in labels)

    def encode_labels(self, values, num_labels, label2id):
        sets = [L.multi_names(v) for v in values]
        if label2id is None:
            names = sorted({n for s in sets for n in s}, key=L.name_sort_key)
            if num_labels is not None and len(names) != num_labels:
                raise L.mismatch(num_labels, names)
            label2id = {n: i for i, n in enumerate(names)}
        unknown = sorted({n for s in sets for n in s if n not in label2id})
        if unknown:
            raise L.unknown_labels(unknown, label2id)
        k = len(label2id)
        enc = []
        for s in sets:
            row = [0.0] * k
            for n in s:
                row[label2id[n]] = 1.0
            enc.append(row)
        return enc, LabelSpace(k, dict(label2id), {i: n for n, i in label2id.items()})

    def label_counts(self, labels, space):
        return dict(zip(space.label2id, np.asarray(labels).sum(0).astype(int).tolist()))

    def item_losses(self, logits, labels):
        # per item: mean over its labels (BCEWithLogitsLoss "mean" over a batch of one)
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none").mean(-1)

    def metrics(self, rows, mean_loss, count):
        from fastft.train.metrics import multilabel_metrics

        return {
            "loss": mean_loss,
            **multilabel_metrics(rows["logits"].cpu().numpy(), rows["labels"].cpu().numpy()),
        }

    def headline(self, test):
        if "f1_micro" not in test:
            return None
        return f"TEST F1 (micro): {test['f1_micro']:.4f}  subset accuracy: {test.get('accuracy', float('nan')):.4f}"

    def prediction_fields(self, logits, id2label):
        names = [str(id2label.get(i, i)) for i in range(logits.shape[-1])]
        probs = 1.0 / (1.0 + np.exp(-logits))
        out = {"prediction": ";".join(n for n, p in zip(names, probs) if p > 0.5)}
        out.update({f"prob_{n}": round(float(p), 6) for n, p in zip(names, probs)})
        return out
