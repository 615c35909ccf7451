"""The sources step of the pipeline: which task ``--task`` asks for, and the raw train (+ validation /
test) rows of the files, the hub dataset or the offline Rotten Tomatoes, with their columns."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastft.train.data.images import is_image_folder
from fastft.train.data.modalities import modality_of
from fastft.train.data.sources import (
    ROTTEN_COLUMNS,
    ROTTEN_LABELS,
    Raw,
    columns_error,
    extract,
    fingerprint,
    load_file,
    load_hub,
    load_rotten_tomatoes,
    name_tags,
    resolve_columns,
)
from fastft.train.errors import DataError
from fastft.train.tasks import TASKS, Task, get_task
from fastft.train.tasks import labels as L

if TYPE_CHECKING:
    from fastft.train.config import DataConfig

__all__ = ["Columns", "requested_task", "load_sources", "data_fingerprints", "source_name", "FINGERPRINTED"]

log = logging.getLogger("fastft")


@dataclass
class Columns:
    text: str | None
    pair: str | None
    label: str | None
    group: str | None


def _hints(task: Task | None):
    """The column hints for the readers: the task's own, else every registered task's, in order."""
    return task if task is not None else tuple(TASKS.values())


def requested_task(c: DataConfig) -> Task | None:
    """The task ``--task`` names; ``None`` for ``--task auto`` (decided from the labels), except that
    an image folder as ``--train-file`` means image classification."""
    name = str(c.task).lower()
    folder = next((p for p in (c.train_file, c.validation_file, c.test_file) if is_image_folder(p)), None)
    if name == "auto":
        return get_task("image_classification") if folder else None
    try:
        task = get_task(name)
        task = modality_of(task).requested(task, c)
    except KeyError:
        from fastft.train.tasks import task_names

        raise DataError(f"unknown task {name!r}: use {', '.join(task_names())}") from None
    if folder:
        modality_of(task).check_folder(folder)
    return task


def load_sources(c: DataConfig, task: Task | None, report: dict):
    """-> (raw splits, columns, a fixed label2id or None, task)."""
    need_label = task is None or task.needs_labels
    read = modality_of(task).read_sources(c, task, report)  # image kinds: their own reader
    if read is not None:
        raws, used = read
        return raws, Columns(used["image"], used["text"], used["label"], used["group"]), None, task
    cols = Columns(
        c.tokens_column or c.text_column,
        c.text_pair_column,
        c.label_column if need_label else None,
        c.split_group_column,
    )
    raws: dict[str, Raw] = {}
    if c.train_file:
        files = {
            "train": (c.train_file, "--train-file"),
            "validation": (c.validation_file, "--validation-file"),
            "test": (c.test_file, "--test-file"),
        }
        named = (c.text_column, c.tokens_column, c.text_pair_column, c.label_column, c.image_column)
        loaded = {s: load_file(p, c.cache_dir, flag, task, named) for s, (p, flag) in files.items() if p}
        cols.text, cols.pair, cols.label = resolve_columns(
            loaded["train"].column_names,
            cols.text,
            cols.pair,
            cols.label,
            need_label,
            f"--train-file {c.train_file}",
            _hints(task),
        )
        for s, ds in loaded.items():
            where = f"{files[s][1]} {files[s][0]}"
            group = cols.group if s == "train" else None
            raws[s] = extract(ds.column_names, ds.__getitem__, where, cols.text, cols.pair, cols.label, group)
            raws[s] = name_tags(raws[s], ds, cols.label, where)
        report["source"] = ", ".join(f"{s}={p}" for s, (p, _) in files.items() if p)
    elif c.validation_file or c.test_file:
        raise DataError("--validation-file/--test-file need --train-file as well")
    elif c.dataset is None or str(c.dataset).lower() in ("rotten_tomatoes", "rotten-tomatoes"):
        return _rotten_tomatoes(c, task, cols, report)
    else:
        dd = load_hub(str(c.dataset), c.cache_dir)
        where = f"dataset {c.dataset!r}"
        cols.text, cols.pair, cols.label = resolve_columns(
            dd["train"].column_names, cols.text, cols.pair, cols.label, need_label, where, _hints(task)
        )
        for s, ds in dd.items():
            group = cols.group if s == "train" else None
            raws[s] = extract(
                ds.column_names, ds.__getitem__, f"{where} ({s})", cols.text, cols.pair, cols.label, group
            )
            raws[s] = name_tags(raws[s], ds, cols.label, f"{where} ({s})")
        report["source"] = f"hub:{c.dataset}"
    report["columns"] = {"text": cols.text, "text_pair": cols.pair, "label": cols.label, "group": cols.group}
    return raws, cols, None, task


#: The data files whose content ``--resume`` compares (the test file does not change what training
#: computes, like the RESUME_EXEMPT ``test_file`` flag).
FINGERPRINTED = ("train_file", "validation_file")


def data_fingerprints(c: DataConfig) -> dict:
    """``{"train_file": {"path", "size", "sha256"}, ...}`` of the regular data files the run reads."""
    out = {}
    for key in FINGERPRINTED:
        path = getattr(c, key, None)
        if path and os.path.isfile(path):
            out[key] = {"path": path, **fingerprint(path)}
    return out


def source_name(c: DataConfig, split: str) -> str:
    """How error messages name a split's source: ``--train-file x.csv``, ``dataset 'name' (train)``."""
    path = getattr(c, f"{split}_file", None) if c.train_file else None
    if path:
        return f"--{split}-file {path}"
    return f"dataset {c.dataset or 'rotten_tomatoes'!r} ({split})"


#: Regression labels beyond this are data errors (an id or a sentinel): their squared error
#: overflows float32 once summed over a batch, so every loss and metric would be inf/NaN.


def _rotten_tomatoes(c: DataConfig, task: Task | None, cols: Columns, report: dict):
    """The built-in 2-class dataset: fixed columns, labels and grouping by movie."""
    raw, info = load_rotten_tomatoes()
    classification = get_task("classification")
    if task is not None and task not in (classification,) and task.needs_labels:
        raise DataError(
            f"rotten_tomatoes is a 2-class dataset, task {task.problem_type!r} does not fit; use --task auto"
        )
    fixed = None
    if task is None or task.needs_labels:
        task = classification
        fixed = {n: i for i, n in enumerate(ROTTEN_LABELS)}
        if c.num_labels is not None and c.num_labels != 2:
            raise L.mismatch(c.num_labels, list(ROTTEN_LABELS))
    else:
        raw.labels = None
    if cols.group is None:
        cols.group = "movie_name"
    elif cols.group != "movie_name":
        raise columns_error("group", cols.group, "--split-group-column", "rotten_tomatoes", ROTTEN_COLUMNS)
    cols.text, cols.pair, cols.label = "text", None, ("label" if task.needs_labels else None)
    report.update(info)
    report["columns"] = {"text": cols.text, "text_pair": cols.pair, "label": cols.label, "group": cols.group}
    return {"train": raw}, cols, fixed, task
