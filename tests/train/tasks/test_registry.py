"""The task registry and the Task protocol: names, detection, saved-model recognition, losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastft.train.tasks import TASKS, detect_task, get_task, task_names, task_of_model
from fastft.train.tasks.base import Task
from tests.models import tiny_bert_config, tiny_gpt2_config


def test_names_aliases_and_problem_types_are_hf_compatible():
    assert task_names() == (
        "auto",
        "contrastive",
        "image_multilabel",
        "image_classification",
        "token_classification",
        "question_answering",
        "causal_lm",
        "multilabel",
        "regression",
        "classification",
    )
    expected = {
        "token_classification": "token_classification",
        "classification": "single_label_classification",
        "multilabel": "multi_label_classification",
        "regression": "regression",
        "causal_lm": "causal_lm",
        "question_answering": "question_answering",
    }
    for name, pt in expected.items():
        assert get_task(name).problem_type == pt
        assert get_task(pt) is get_task(name)  # the saved string finds the task again
    assert get_task("multi_label") is TASKS["multilabel"]
    with pytest.raises(KeyError):
        get_task("ner-ish")


def test_auto_detection_order():
    texts = ["a", "b", "c"]
    assert detect_task([["x"], [], ["y", "z"]], texts).name == "multilabel"
    assert detect_task([0.5, 1.0, 2.25], texts).name == "regression"
    assert detect_task([1.0, 2.0, 0.0], texts).name == "classification"  # integer-valued floats
    assert detect_task(["pos", "neg", "pos"], texts).name == "classification"
    words = [["Paris", "is"], ["Bob"], ["x", "y"]]
    assert detect_task([["B-LOC", "O"], ["B-PER"], ["O", "O"]], words).name == "token_classification"


def test_task_of_saved_model_configs():
    bert = tiny_bert_config(num_labels=3, architectures=["BertForSequenceClassification"])
    assert task_of_model(bert).name == "classification"
    bert.problem_type = "multi_label_classification"
    assert task_of_model(bert).name == "multilabel"
    assert task_of_model(tiny_bert_config(num_labels=1)).name == "regression"
    gpt = tiny_gpt2_config(architectures=["GPT2LMHeadModel"])
    assert task_of_model(gpt).name == "causal_lm"
    tagger = tiny_bert_config(num_labels=5, architectures=["BertForTokenClassification"])
    assert task_of_model(tagger).name == "token_classification"


@pytest.mark.parametrize("name", ["classification", "multilabel", "regression"])
def test_item_losses_match_torch(name):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 1 if name == "regression" else 4, generator=g)
    task = get_task(name)
    if name == "classification":
        labels = torch.tensor([0, 3, 1, 2, 1])
        ref = F.cross_entropy(logits, labels, reduction="none")
    elif name == "multilabel":
        labels = (torch.rand(5, 4, generator=g) > 0.5).float()
        ref = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(-1)
    else:
        labels = torch.randn(5, generator=g)
        ref = (logits[:, 0] - labels) ** 2
    torch.testing.assert_close(task.item_losses(logits, labels), ref)
    assert task.item_losses(logits, labels).shape == (5,)


def test_regression_item_losses_multi_output():
    logits, labels = torch.randn(4, 3), torch.randn(4, 3)
    torch.testing.assert_close(
        get_task("regression").item_losses(logits, labels), ((logits - labels) ** 2).mean(-1)
    )


def test_best_metric_direction():
    from fastft.train.evaluate import best_metric_spec

    assert best_metric_spec(get_task("classification"), None) == ("accuracy", False)
    assert best_metric_spec(get_task("regression"), None) == ("rmse", True)
    assert best_metric_spec(get_task("causal_lm"), None) == ("loss", True)
    assert best_metric_spec(get_task("multilabel"), "hamming_loss") == ("hamming_loss", True)
    assert best_metric_spec(get_task("classification"), "loss") == ("loss", True)


def test_every_task_fills_in_the_protocol():
    for task in TASKS.values():
        assert (
            isinstance(task, Task)
            and task.name
            and task.problem_type
            and task.auto_class.startswith("AutoModel")
        )
        assert task.best_metric and task.predict_format in ("csv", "jsonl")


def test_causal_collate_masks_padding():
    import numpy as np

    ids = np.array([[5, 6, 0], [7, 0, 0]])
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    labels = get_task("causal_lm").collate_labels({}, {"input_ids": ids, "attention_mask": mask}, False)
    assert labels.tolist() == [[5, 6, -100], [7, -100, -100]]


def test_evaluator_pads_token_level_rows_across_batches():
    from fastft.train.evaluate import _cat_padded

    a, b = torch.ones(2, 3, dtype=torch.long), torch.full((1, 5), 2, dtype=torch.long)
    out = _cat_padded([a, b], -100)
    assert out.shape == (3, 5) and out[:2, 3:].eq(-100).all() and out[2].eq(2).all()
    assert _cat_padded([a, a], 0).shape == (4, 3)


@pytest.mark.parametrize(
    "name, teacher, expected",
    [
        ("causal_lm", None, ["attention", "loss"]),  # the model's own loss is the one fastft.patch fuses
        ("causal_lm", "t", ["attention", "KD loss"]),
        ("classification", None, ["attention", "cross-entropy loss"]),  # computed by the task
        ("image_classification", None, ["attention", "cross-entropy loss"]),
        ("token_classification", "t", ["attention", "KD loss"]),
        ("image_multilabel", None, ["attention"]),  # BCE is plain torch
        ("multilabel", "t", ["attention"]),  # no KD path: the teacher is not a fused part
        ("regression", None, ["attention"]),
    ],
)
def test_fused_parts_name_what_training_uses(name, teacher, expected):
    from types import SimpleNamespace

    cfg = SimpleNamespace(teacher=teacher)
    assert get_task(name).fused_parts(["attention", "loss"], torch.nn.Linear(2, 2), cfg) == expected
