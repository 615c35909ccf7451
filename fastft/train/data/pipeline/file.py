"""``prepare_file``: one data file for ``fastft eval`` / ``predict`` with a trained model's task and labels."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from fastft.train.data.clean import as_words, clean, is_missing
from fastft.train.data.images import (
    check_images,
    image_dataset,
    is_image_folder,
    load_image_folder,
    mode_note,
    table_raw,
)
from fastft.train.data.modalities import modality_of
from fastft.train.data.pipeline.prepare import check_numbers
from fastft.train.data.sources import (
    Raw,
    check_cache_dir,
    extract,
    load_file,
    name_tags,
    resolve_columns,
)
from fastft.train.data.tokenize import effective_max_length, tokenize
from fastft.train.errors import DataError
from fastft.train.tasks import Task, get_task

if TYPE_CHECKING:
    from fastft.train.config import DataConfig

__all__ = ["prepare_file"]

log = logging.getLogger("fastft")


def _check_word_rows(raw: Raw) -> None:
    """The word-list checks of cleaning, for a file scored as it is (no row dropped)."""
    _, dropped = clean(raw.take(range(len(raw))), need_labels=True)
    if dropped["missing_label"]:
        raise DataError(f"{dropped['missing_label']} rows have no tags; fill or remove them")


def prepare_file(
    path: str,
    cfg: DataConfig,
    tokenizer: Any,
    *,
    task: Task | str,
    label2id: dict[str, int] | None,
    require_labels: bool,
):
    """Tokenize one file for ``fastft eval``/``predict``; every original column (raw text) is kept.

    No row is dropped (predictions must line up with the file); empty text becomes "". With
    ``require_labels`` the label column is encoded into ``labels`` with the model's ``label2id``
    (unknown or missing labels -> ``DataError``).
    """
    import datasets

    task = get_task(task) if isinstance(task, str) else task
    if not modality_of(task).tokenized:
        return _prepare_image_file(path, cfg, task, label2id, require_labels)
    check_cache_dir(cfg.cache_dir)
    ds = load_file(path, cfg.cache_dir, "file", task)
    where = f"file {path}"
    need_label = require_labels and task.needs_labels
    text_col, pair_col, label_col = resolve_columns(
        ds.column_names,
        cfg.tokens_column or cfg.text_column,
        cfg.text_pair_column,
        cfg.label_column,
        need_label,
        where,
        task,
    )
    raw = extract(
        ds.column_names, ds.__getitem__, where, text_col, pair_col, label_col if need_label else None, None
    )
    raw = name_tags(raw, ds, label_col if need_label else None, where)
    cols = {c: ds[c] for c in ds.column_names}
    for c in (text_col, pair_col):
        if c:
            cols[c] = [as_words(t) for t in cols[c]]
    if raw.where is not None and need_label:  # word lists: named labels, validated counts and scheme
        _check_word_rows(raw)
        cols[label_col] = raw.labels
    if need_label:
        values = cols[label_col]
        missing = sum(is_missing(v) for v in values)
        if missing:
            raise DataError(
                f"{missing} rows of {path} have no label in column {label_col!r}; fill or remove them"
            )
        if task.named_labels and not label2id:
            raise DataError("the model has no label2id mapping; pass the model that was trained with fastft")
        cols["labels"] = task.encode_labels(values, None, label2id)[0]
        check_numbers(task, cols["labels"], [f"{where} row {i + 1}" for i in range(len(values))], label_col)
    if len(cols[text_col]) == 0:
        raise DataError(f"{path} has no rows")
    max_length = effective_max_length(tokenizer, cfg.max_length)
    tok, _ = tokenize(
        datasets.Dataset.from_dict(cols), tokenizer, text_col, pair_col, max_length, task, cfg.cache_dir
    )
    return tok


def _prepare_image_file(path: str, cfg: DataConfig, task: Task, label2id, require_labels: bool):
    """``prepare_file`` for image tasks: an image folder or a table, every row kept, every image
    checked; the dataset holds ``image`` (the path as given / relative to the folder), ``image_ref``
    (+ ``text``, ``labels``)."""
    need_label = require_labels and task.needs_labels
    if is_image_folder(path):
        raw = load_image_folder(path, "--file", need_label)
        shown = [os.path.relpath(r, path) for r in raw.texts]
    else:
        ds = load_file(path, cfg.cache_dir, "--file", task)
        captions = modality_of(task).captions
        raw, used = table_raw(ds, path, f"--file {path}", task, cfg, need_label, False, captions=captions)
        shown = [v if isinstance(v, str) else f"row {i + 1}" for i, v in enumerate(ds[used["image"]])]
    for i, ref in enumerate(raw.texts):
        if ref is None or (isinstance(ref, (str, bytes)) and not ref.strip()):
            raise DataError(f"{raw.where[i]}: no image; fill the image column or remove the row")
    note = mode_note(check_images(raw, path))
    if note:
        log.warning("note: %s", note)
    if raw.pairs is not None and any(is_missing(v) for v in raw.pairs):  # never scored as "None"
        missing = sum(is_missing(v) for v in raw.pairs)
        raise DataError(f"{missing} rows of {path} have no caption; fill or remove them")
    if need_label:
        missing = sum(is_missing(v) for v in raw.labels)
        if missing:
            raise DataError(f"{missing} rows of {path} have no label; fill or remove them")
        if task.named_labels and not label2id:
            raise DataError("the model has no label2id mapping; pass the model that was trained with fastft")
        raw.labels = task.encode_labels(raw.labels, None, label2id)[0]
    if len(raw) == 0:
        raise DataError(f"{path} has no rows")
    return image_dataset(raw, need_label, {"image": shown})
