"""Regression (``--task regression``): one number per row.

Columns: text (+ pair) and a numeric label. Auto-detected when every label is a number and some
is not an integer. Loss: squared error (MSE over the batch). Metrics: MAE, MSE, RMSE, Pearson,
R^2; best by RMSE (lower is better). Predict: the number.
"""

from __future__ import annotations

from fastft.train.errors import DataError
from fastft.train.tasks import labels as L
from fastft.train.tasks.base import LabelSpace, Task


class Regression(Task):
    name = "regression"
    problem_type = "regression"
    collapse_kind = "regression"
    best_metric = "rmse"
    lower_is_better = ("loss", "mse", "mae", "rmse")

    def detects(self, labels, texts):
        return (
            bool(labels)
            and all(L.is_number(v) for v in labels)
            and any(not float(v).is_integer() for v in labels)
        )

    def claims_model(self, config):
        pt = getattr(config, "problem_type", None)
        return pt == self.problem_type or (pt is None and getattr(config, "num_labels", 2) == 1)

    def encode_labels(self, values, num_labels, label2id):
        bad = [v for v in values if not (L.is_number(v) or L.parses_float(v))]
        if bad:
            raise DataError(
                f"regression needs numeric labels, found {bad[0]!r}; fix the label column or set --task"
            )
        if num_labels not in (None, 1):
            raise DataError(f"regression has one output but num_labels={num_labels}; set num_labels to 1")
        return [float(v) for v in values], LabelSpace(1)

    def item_losses(self, logits, labels):
        pred = logits.squeeze(-1) if logits.shape[-1] == 1 else logits
        per = (pred - labels.to(pred.dtype).view_as(pred)) ** 2
        return per.reshape(pred.shape[0], -1).mean(-1)

    def metrics(self, rows, mean_loss, count):
        from fastft.train.metrics import regression_metrics

        return {
            "loss": mean_loss,
            **regression_metrics(rows["logits"].cpu().numpy(), rows["labels"].cpu().numpy()),
        }

    def headline(self, test):
        return (
            f"TEST RMSE: {test['rmse']:.4f}  MAE: {test.get('mae', float('nan')):.4f}"
            if "rmse" in test
            else None
        )

    def describe(self, space):
        return f"{self.problem_type}, {space.num_labels} labels"

    def prediction_fields(self, logits, id2label):
        return {"prediction": float(logits.reshape(-1)[0])}
