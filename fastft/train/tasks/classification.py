"""Single-label sequence classification (``--task classification``): one class per row.

Columns: text (+ optional pair) and a label. Auto-detected as the fallback of ``--task auto``.
Labels: string labels get sorted names; integer labels ``0..K-1`` keep their ids, other integer
sets are mapped in sorted order. Loss: cross-entropy through ``fastft.functional.cross_entropy``
(the fused kernel) unless ``--no-fused``, per-class weighted with ``--class-weights`` (training
loss only: the evaluation loss stays the plain CE); with a teacher, the fused KD loss. Metrics: accuracy,
F1, precision/recall, ROC-AUC, confusion matrix; best by accuracy. Predict: label, score and
one probability column per label.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fastft.train.errors import ConfigError, DataError
from fastft.train.numerics import softmax
from fastft.train.tasks import labels as L
from fastft.train.tasks.base import LabelSpace, Task, model_inputs


def kd_loss_sum(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, cfg) -> torch.Tensor:
    """Sum over items of (1-a)*CE + a*T^2*KL(teacher_T || student_T); ignore_index -100 items excluded."""
    from fastft.functional import kd_loss

    return kd_loss(
        student, teacher.float(), target, temperature=cfg.kd_temperature, alpha=cfg.kd_alpha, reduction="sum"
    )


def ce_sum(
    logits: torch.Tensor, labels: torch.Tensor, fused: bool, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Summed cross-entropy (ignore_index -100), through fastft's fused kernel when ``fused``;
    ``weight``: per-class weights (torch's ``weight=``: row loss ``w[y] * nll``)."""
    if fused:
        try:
            from fastft.functional import cross_entropy
        except ImportError:
            cross_entropy = None
        if cross_entropy is not None:
            return cross_entropy(logits, labels, reduction="sum", weight=weight)
    return F.cross_entropy(logits, labels, reduction="sum", weight=weight)


class Classification(Task):
    name = "classification"
    fused_loss = "cross-entropy loss"
    distils = True
    aliases = ("single_label_classification",)
    problem_type = "single_label_classification"
    collapse_kind = "classification"
    named_labels = True
    best_metric = "accuracy"

    def detects(self, labels: list, texts: list) -> bool:
        return True  # the catch-all: registered last

    def claims_model(self, config) -> bool:
        return True  # the catch-all for saved models too

    def encode_labels(self, values, num_labels, label2id):
        ints = all(L.is_number(v) and float(v).is_integer() for v in values) or all(
            isinstance(v, (bool, np.bool_)) for v in values
        )
        if label2id is None:
            label2id = self._label_space(values, ints, num_labels)
        keys = [str(int(v)) if ints else str(v).strip() for v in values]
        unknown = sorted({k for k in keys if k not in label2id})
        space = LabelSpace(len(label2id), dict(label2id), {i: n for n, i in label2id.items()})
        if unknown and ints and all(0 <= int(v) < len(label2id) for v in values):
            # A model with generic names (LABEL_0, ...) scored on integer labels: the ints are the ids.
            return [int(v) for v in values], space
        if unknown:
            raise L.unknown_labels(unknown, label2id)
        return [label2id[k] for k in keys], space

    @staticmethod
    def _label_space(values, ints: bool, num_labels: int | None) -> dict[str, int]:
        if ints:
            vals = sorted({int(v) for v in values})
            if num_labels is not None and vals and vals[0] >= 0 and vals[-1] < num_labels:
                label2id = {str(i): i for i in range(num_labels)}
            elif num_labels is None and vals == list(range(len(vals))):
                label2id = {str(i): i for i in vals}
            else:
                label2id = {str(v): i for i, v in enumerate(vals)}
        else:
            names = sorted({str(v).strip() for v in values}, key=L.name_sort_key)
            label2id = {n: i for i, n in enumerate(names)}
        if num_labels is not None and len(label2id) != num_labels:
            raise L.mismatch(num_labels, list(label2id))
        if len(label2id) < 2:
            raise DataError(
                f"only one label value ({', '.join(label2id)}) in the data: classification needs "
                "at least 2 (or use --task regression)"
            )
        return label2id

    def strata(self, labels):
        return labels

    def label_counts(self, labels, space):
        return {space.id2label[k]: v for k, v in sorted(Counter(labels).items())}

    def collate_labels(self, feats, padded, left):
        return torch.tensor(feats["labels"], dtype=torch.long) if "labels" in feats else None

    def item_losses(self, logits, labels):
        return F.cross_entropy(logits, labels, reduction="none")

    def loss(self, model, batch, n_items, *, teacher=None, cfg=None, class_weight=None):
        """``class_weight`` (``--class-weights``): the sum of ``w[y] * nll`` is divided by the item
        count, not by ``sum w[y]`` as torch's ``mean`` does, so micro-batches still add up to the
        accumulated batch's loss; ``auto`` weights average 1 over the training rows, so the scale
        stays that of the unweighted loss."""
        inputs = model_inputs(batch)
        logits = model(**inputs).logits.float()
        if teacher is not None:
            with torch.no_grad():
                t_logits = teacher(**inputs).logits.float()
            return kd_loss_sum(logits, t_logits, batch["labels"], cfg) / n_items
        return ce_sum(logits, batch["labels"], cfg is None or cfg.fused, class_weight) / n_items

    def loss_setup(self, cfg, train, space, report, device):
        """The training labels' distribution (start-up report, results.json) and the
        ``--class-weights`` vector (``class_weight``, float32 on ``device``)."""
        from fastft.train import diagnose

        spec = (cfg.class_weights or "none").strip().lower()
        if spec == "imbalanced" and cfg.teacher:
            spec = "none"  # "weights if imbalanced" only where weights apply
        if spec != "none" and cfg.teacher:
            raise ConfigError("--class-weights does not apply to the distillation loss; drop one of them")
        dist = diagnose.label_distribution(list(train["labels"]), space.id2label)
        report["label_distribution"] = dist
        ratio = dist["imbalance_ratio"]
        notes = [
            "  labels     train: "
            + ", ".join(f"{k} {v} ({dist['fractions'][k]:.0%})" for k, v in dist["counts"].items())
            + (f"; imbalance {ratio:.1f}x" if ratio else "")
        ]
        how = (
            spec
            if spec != "imbalanced"
            else f"imbalanced (imbalance >= {diagnose.STRONG_IMBALANCE:g}x: auto)"
        )
        spec = diagnose.resolve_class_weights(spec, ratio)
        if spec == "none" and ratio is not None and ratio >= diagnose.STRONG_IMBALANCE:
            notes.append(
                "  hint       --class-weights auto favours the minority classes at some cost in accuracy "
                "(pair it with --metric-for-best f1_macro); see the README's class weights"
            )
        weights = diagnose.class_weights(list(dist["counts"].values()), spec)
        if weights is None:
            return {}, notes
        report["class_weights"] = dict(zip(dist["counts"], weights))
        notes.append(
            f"  weights    --class-weights {how}: "
            + ", ".join(f"{k} {w:.3g}" for k, w in zip(dist["counts"], weights))
        )
        return {"class_weight": torch.tensor(weights, dtype=torch.float32, device=device)}, notes

    def metrics(self, rows, mean_loss, count):
        from fastft.train.metrics import classification_metrics

        return {
            "loss": mean_loss,
            **classification_metrics(rows["logits"].cpu().numpy(), rows["labels"].cpu().numpy()),
        }

    def headline(self, test):
        return f"TEST ACCURACY: {test['accuracy']:.4f}" if "accuracy" in test else None

    def prediction_fields(self, logits, id2label) -> dict[str, Any]:
        names = [str(id2label.get(i, i)) for i in range(logits.shape[-1])]
        probs = softmax(logits)
        k = int(probs.argmax())
        out: dict[str, Any] = {"prediction": names[k], "score": round(float(probs[k]), 6)}
        out.update({f"prob_{n}": round(float(p), 6) for n, p in zip(names, probs)})
        return out
