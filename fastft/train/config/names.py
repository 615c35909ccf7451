"""The name tables a config is checked against, kept below the libraries that act on them.

``--task`` names (the task registry checks its tasks against :data:`TASK_NAMES` when it is
imported), ``--report-to`` trackers (their callbacks live in :mod:`fastft.train.trackers`) and
``--augment`` presets (built by :mod:`fastft.train.vision` / :mod:`fastft.train.augment`). Config
validation needs the names only, so it never imports those modules.
"""

from __future__ import annotations

import difflib
import importlib.util

from fastft.train.errors import ConfigError

__all__ = [
    "TASK_NAMES",
    "task_names",
    "is_task_name",
    "TRACKERS",
    "TRACKER_PACKAGES",
    "parse_report_to",
    "IMAGE_PRESETS",
    "TEXT_PRESETS",
    "parse_augment",
]

#: Every registered task's ``name`` -> its other ``--task`` spellings (aliases and the HF
#: ``problem_type``), in the registry's order (the detection priority).
TASK_NAMES: dict[str, tuple[str, ...]] = {
    "contrastive": ("image_text", "clip", "siglip", "image_text_contrastive"),
    "image_multilabel": ("image_multi_label", "image-multilabel", "multi_label_classification"),
    "image_classification": ("image-classification", "image_single_label", "single_label_classification"),
    "token_classification": ("ner", "token-classification"),
    "question_answering": ("qa", "extractive_qa", "question-answering"),
    "causal_lm": (),
    "multilabel": ("multi_label", "multi_label_classification"),
    "regression": (),
    "classification": ("single_label_classification",),
}


def task_names() -> tuple[str, ...]:
    """The ``--task`` choices: ``auto`` and every registered task's name."""
    return ("auto", *TASK_NAMES)


def is_task_name(name: str) -> bool:
    """Whether ``--task name`` names a task (``auto``, a name, an alias or a ``problem_type``)."""
    name = str(name).lower()
    return name in task_names() or any(name in other for other in TASK_NAMES.values())


#: ``--report-to`` trackers and the (module, pip extra) each needs.
TRACKERS = ("tensorboard", "wandb", "mlflow")
TRACKER_PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
}


def parse_report_to(report_to: str | None) -> list[str]:
    """``"wandb, mlflow"`` -> ``["wandb", "mlflow"]``; ``none`` / empty -> ``[]``; checks installs."""
    names: list[str] = []
    for raw in (report_to or "none").split(","):
        name = raw.strip().lower()
        if not name:
            raise ConfigError(
                f"--report-to {report_to!r}: empty name; use a comma list of {', '.join(TRACKERS)}"
            )
        if name == "none":
            continue
        if name not in TRACKERS:
            close = difflib.get_close_matches(name, TRACKERS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"--report-to {name!r} is not one of none, {', '.join(TRACKERS)}{hint}")
        if name not in names:
            names.append(name)
    if names and "none" in [r.strip().lower() for r in (report_to or "").split(",")]:
        raise ConfigError(f"--report-to {report_to!r}: 'none' cannot be combined with a tracker")
    for name in names:
        module, extra = TRACKER_PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"--report-to {name} needs the {module} package: pip install fastft[{extra}]")
    return names


#: ``--augment`` presets for image tasks (train split only) and for text tasks.
IMAGE_PRESETS = ("flip", "crop", "rotate", "color", "randaugment")
TEXT_PRESETS = ("eda",)


def parse_augment(spec: str | None) -> list[tuple[str, float | None]]:
    """``"flip,rotate=30"`` -> ``[("flip", None), ("rotate", 30.0)]``; unknown names -> ConfigError."""
    if spec is None or not str(spec).strip() or str(spec).strip().lower() == "none":
        return []
    out = []
    for part in str(spec).lower().split(","):
        name, _, value = part.strip().partition("=")
        if name not in IMAGE_PRESETS + TEXT_PRESETS:
            raise ConfigError(
                f"unknown augment {name!r}: images take {', '.join(IMAGE_PRESETS)} (combined with "
                "commas), texts take eda"
            )
        if value and name != "rotate":
            raise ConfigError(f"--augment: only rotate takes a value (rotate=DEGREES), not {part.strip()!r}")
        try:
            out.append((name, float(value) if value else None))
        except ValueError:
            raise ConfigError(f"--augment {part.strip()!r}: the degrees must be a number") from None
    return out
