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
2. add one line to ``_REGISTRY`` below and its names to ``fastft.train.config.names.TASK_NAMES`` (the
   config checks ``--task`` against that table; importing this package fails when they differ). Its position is its priority for
   ``--task auto`` detection and for recognising a saved model: keep ``Classification`` last.

``--task`` accepts every task's ``name`` and ``aliases``; ``problem_type`` is what model configs
and results.json store (Hugging Face's values, so old checkpoints still load).
"""

from __future__ import annotations

from fastft.train.config.names import TASK_NAMES
from fastft.train.config.names import task_names as task_names
from fastft.train.tasks.base import IGNORE_INDEX, MODEL_INPUTS, EvalBatch, LabelSpace, Task
from fastft.train.tasks.causal_lm import CausalLM
from fastft.train.tasks.classification import Classification
from fastft.train.tasks.contrastive import Contrastive
from fastft.train.tasks.image_classification import IMAGE_MULTILABEL, ImageClassification
from fastft.train.tasks.multilabel import MultiLabel
from fastft.train.tasks.question_answering import QuestionAnswering
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
    IMAGE_MULTILABEL,  # image tasks never detect from labels; first, so they claim image models
    ImageClassification(),
    TokenClassification(),
    QuestionAnswering(),  # detected from answers dicts ({"text": [...], "answer_start": [...]})
    CausalLM(),
    MultiLabel(),
    Regression(),
    Classification(),
)

TASKS: dict[str, Task] = {t.name: t for t in _REGISTRY}
_BY_NAME: dict[str, Task] = {n: t for t in _REGISTRY for n in (t.name, t.problem_type, *t.aliases)}


def _check_names() -> None:
    """The registry and the config's name table (what ``--task`` accepts) list the same spellings."""
    ours = {t.name: {t.problem_type, *t.aliases} - {t.name} for t in _REGISTRY}
    if list(ours) != list(TASK_NAMES) or any(ours[n] != set(TASK_NAMES[n]) for n in ours):
        raise RuntimeError(
            "fastft.train.tasks: the registry's names differ from fastft.train.config.names.TASK_NAMES; "
            "update that table with the task's name, aliases and problem_type"
        )


_check_names()


def get_task(name: str) -> Task:
    """The task called ``name`` (its name, an alias or its ``problem_type``); ``KeyError`` if none."""
    return _BY_NAME[str(name).lower()]


def detect_task(labels: list, texts: list) -> Task:
    """``--task auto``: the first registered task whose ``detects`` says yes."""
    return next(t for t in _REGISTRY if t.needs_labels and t.detects(labels, texts))


def task_of_model(config) -> Task:
    """The task of a saved model, from its ``AutoConfig`` (architectures, problem_type, num_labels)."""
    return next(t for t in _REGISTRY if t.claims_model(config))
