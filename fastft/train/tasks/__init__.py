"""Training tasks: one file per task, one registry line each.

A task (:class:`~fastft.train.tasks.base.Task`) says, in one place, which columns it needs, which
auto-class loads its model, how raw labels become tensors, how a batch's labels are collated, its
loss (through fastft's fused ops where they apply), its metrics and default best metric, and what
``fastft predict`` writes. The data pipeline, the loop, the evaluator and the CLI only call it.

Adding a task:

1. write ``fastft/train/tasks/<name>.py`` with a ``Task`` subclass (set ``name``, ``problem_type``,
   ``auto_class``, ``best_metric``; implement ``encode_labels``, ``item_losses`` and ``metrics``;
   override ``detects``/``claims_model``/``tokenize``/``collate_labels``/``count_items``/``loss``/
   ``eval_batch``/``predict`` where the defaults -- sequence-level, one label per row -- do not fit);
2. add one line to ``_REGISTRY`` below. Its position is its priority for ``--task auto`` detection
   and for recognising a saved model: keep ``Classification`` (the catch-all) last.

``--task`` accepts every task's ``name`` and ``aliases``; ``problem_type`` is what model configs
and results.json store (Hugging Face's values, so old checkpoints still load).
"""

from __future__ import annotations

from fastft.train.tasks.base import IGNORE_INDEX, MODEL_INPUTS, EvalBatch, LabelSpace, Task
from fastft.train.tasks.causal_lm import CausalLM
from fastft.train.tasks.classification import Classification
from fastft.train.tasks.contrastive import Contrastive
from fastft.train.tasks.image_classification import ImageClassification, ImageMultiLabel
from fastft.train.tasks.multilabel import MultiLabel
from fastft.train.tasks.regression import Regression
from fastft.train.tasks.token_classification import TokenClassification

__all__ = [
    "Task",
    "LabelSpace",
    "EvalBatch",
    "MODEL_INPUTS",
    "IGNORE_INDEX",
    "TASKS",
    "task_names",
    "get_task",
    "detect_task",
    "task_of_model",
]

# Order = detection priority (``--task auto`` and saved models); the catch-all Classification last.
_REGISTRY: tuple[Task, ...] = (
    Contrastive(),  # claims CLIP/SigLIP base models (no task head) only; never detected from labels
    ImageMultiLabel(),  # image tasks never detect from labels; first, so they claim image models
    ImageClassification(),
    TokenClassification(),
    CausalLM(),
    MultiLabel(),
    Regression(),
    Classification(),
)

TASKS: dict[str, Task] = {t.name: t for t in _REGISTRY}
_BY_NAME: dict[str, Task] = {n: t for t in _REGISTRY for n in (t.name, t.problem_type, *t.aliases)}


def task_names() -> tuple[str, ...]:
    """The ``--task`` choices: ``auto`` and every registered task's name."""
    return ("auto", *TASKS)


def get_task(name: str) -> Task:
    """The task called ``name`` (its name, an alias or its ``problem_type``); ``KeyError`` if none."""
    return _BY_NAME[str(name).lower()]


def detect_task(labels: list, texts: list) -> Task:
    """``--task auto``: the first registered task whose ``detects`` says yes."""
    return next(t for t in _REGISTRY if t.needs_labels and t.detects(labels, texts))


def task_of_model(config) -> Task:
    """The task of a saved model, from its ``AutoConfig`` (architectures, problem_type, num_labels)."""
    return next(t for t in _REGISTRY if t.claims_model(config))
