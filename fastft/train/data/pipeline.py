"""``prepare_data``: sources -> cleaning -> labels -> split -> limits + augmentation -> tokenization.

Decisions users see the effects of:

* **Sources** (:mod:`.sources`): ``train_file`` (+ ``validation_file``/``test_file``) wins over
  ``dataset``; ``dataset=None`` without files, or ``"rotten_tomatoes"``, is the offline default.
* **Labels** (the task's ``encode_labels``, jointly over all splits so a class seen only in
  validation is still known). ``--task auto`` asks the registered tasks in order (list values ->
  multi-label; numbers with a non-integer value -> regression; else single-label classification).
  ``num_labels`` is 1 for regression and 0 for causal_lm.
* **Cleaning** (:mod:`.clean`) per split, counted in ``report``.
* **Splits** (:mod:`.split`): one split given -> seeded, stratified (by the task's strata)
  ``split_ratios`` train/validation/test split; with ``split_group_column`` whole groups go to one
  split. Train + validation given -> test is carved out of train (ratio test/(train+test)); train +
  test -> validation likewise. A test ratio of 0 makes the test split the validation split. Indices
  (rows of the source, 0-based) go to ``output_dir/split_indices.json``. ``max_train_samples`` /
  ``max_eval_samples`` then take a seeded random subset of train / of validation and test.
* **Augmentation** (EDA) of the train split only; **tokenization** cached (:mod:`.tokenize`).
* **Images** (``task.modality != "text"``, :mod:`.images`): the sources give image references (image
  folder, path column, HF ``Image``), every image is checked up front (missing/corrupt -> DataError
  naming the row), cleaning/labels/splits/limits are the same, and the splits hold references
  (``image_ref``): the loader decodes, augments (train only) and processes them per batch.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastft.train.augment import augment_rows
from fastft.train.data.clean import as_words, clean, is_missing, is_word_list
from fastft.train.data.images import (
    check_images,
    clean_images,
    image_dataset,
    is_image_folder,
    load_image_folder,
    load_image_sources,
    mode_note,
    table_raw,
)
from fastft.train.data.sources import (
    ROTTEN_COLUMNS,
    ROTTEN_LABELS,
    Raw,
    check_cache_dir,
    columns_error,
    extract,
    fingerprint,
    load_file,
    load_hub,
    load_rotten_tomatoes,
    name_tags,
    resolve_columns,
)
from fastft.train.data.split import split_indices, subset, write_json_atomic
from fastft.train.data.tokenize import effective_max_length, tokenize
from fastft.train.errors import ConfigError, DataError
from fastft.train.tasks import LabelSpace, Task, detect_task, get_task
from fastft.train.tasks import labels as L
from fastft.train.vision import check_augment

if TYPE_CHECKING:
    from fastft.train.config import DataConfig

__all__ = ["PreparedData", "prepare_data", "prepare_file", "requested_task"]

log = logging.getLogger("fastft")
SPLITS = ("train", "validation", "test")


@dataclass
class PreparedData:
    splits: dict[str, Any]  # "train"/"validation"/"test" -> tokenized datasets.Dataset
    problem_type: str
    num_labels: int
    label2id: dict[str, int] | None
    id2label: dict[int, str] | None
    report: dict = field(default_factory=dict)
    task: Task | None = None

    @property
    def labels(self) -> LabelSpace:
        return LabelSpace(self.num_labels, self.label2id, self.id2label)


@dataclass
class _Columns:
    text: str | None
    pair: str | None
    label: str | None
    group: str | None


def requested_task(c: DataConfig) -> Task | None:
    """The task ``--task`` names; ``None`` for ``--task auto`` (decided from the labels), except that
    an image folder as ``--train-file`` means image classification."""
    name = str(c.task).lower()
    folder = next((p for p in (c.train_file, c.validation_file, c.test_file) if is_image_folder(p)), None)
    if name == "auto":
        return get_task("image_classification") if folder else None
    try:
        task = get_task(name)
        if task.modality == "image_text":  # its columns depend on the run's options (class column)
            task = task.configure(c)
    except KeyError:
        from fastft.train.tasks import task_names

        raise DataError(f"unknown task {name!r}: use {', '.join(task_names())}") from None
    if folder and task.modality == "text":
        raise DataError(
            f"{folder} is a folder: folders of images need --task image_classification; text tasks take "
            "a data file (csv, tsv, json, jsonl, parquet)"
        )
    return task


_requested_task = requested_task


def prepare_data(cfg: DataConfig, tokenizer: Any, output_dir: str | None = None) -> PreparedData:
    """Load, clean, label, split, (augment) and tokenize the data described by ``cfg`` (a
    :class:`~fastft.train.config.DataConfig`, e.g. a ``TrainConfig``)."""
    task = _requested_task(cfg)
    check_cache_dir(cfg.cache_dir)
    report: dict[str, Any] = {}
    raws, cols, fixed, task = _load_sources(cfg, task, report)
    report["data_files"] = data_fingerprints(cfg)  # --resume sees a file changed under its name
    _clean_splits(raws, task is None or task.needs_labels, report, _modality(task))
    if _modality(task) != "text":
        _check_images(raws, report)
    task, space = _encode_labels(raws, task, cfg, fixed)
    for s, raw in raws.items():
        _check_numbers(
            task, raw.labels, [f"{_source_name(cfg, s)} row {r + 1}" for r in raw.rows], cols.label
        )
    task = task.configure(cfg)
    _split(raws, task, cfg, cols, output_dir, report)
    _limit_and_augment(raws, cfg, report, task.modality)
    for w in task.split_warnings(raws, space):
        log.warning("data: %s", w)
        report.setdefault("warnings", []).append(w)
    if task.modality == "text":
        splits = _tokenize_splits(raws, task, tokenizer, cfg, cols, report)
    else:  # references only: the loader decodes, augments and processes each batch
        built: dict[int, Any] = {}
        splits = {s: built.setdefault(id(raws[s]), image_dataset(raws[s], task.needs_labels)) for s in SPLITS}
    counts = {s: task.label_counts(raws[s].labels, space) for s in splits}
    if any(v is not None for v in counts.values()):
        report["label_counts"] = counts
    report["split_sizes"] = {s: len(d) for s, d in splits.items()}
    report["problem_type"] = task.problem_type
    log.info(
        "data: %s", json.dumps({k: report[k] for k in ("split_sizes", "dropped_empty", "dropped_duplicate")})
    )
    return PreparedData(
        splits, task.problem_type, space.num_labels, space.label2id, space.id2label, report, task
    )


def _load_sources(c: DataConfig, task: Task | None, report: dict):
    """-> (raw splits, columns, a fixed label2id or None, task)."""
    need_label = task is None or task.needs_labels
    if task is not None and task.modality != "text":
        raws, used = load_image_sources(c, task, report)
        return raws, _Columns(used["image"], used["text"], used["label"], used["group"]), None, task
    cols = _Columns(
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
            task,
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
            dd["train"].column_names, cols.text, cols.pair, cols.label, need_label, where, task
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


def _source_name(c: DataConfig, split: str) -> str:
    """How error messages name a split's source: ``--train-file x.csv``, ``dataset 'name' (train)``."""
    path = getattr(c, f"{split}_file", None) if c.train_file else None
    if path:
        return f"--{split}-file {path}"
    return f"dataset {c.dataset or 'rotten_tomatoes'!r} ({split})"


#: Regression labels beyond this are data errors (an id or a sentinel): their squared error
#: overflows float32 once summed over a batch, so every loss and metric would be inf/NaN.
LABEL_LIMIT = 1e15


def _check_numbers(task: Task, labels, where: list[str], column: str | None) -> None:
    """Regression labels must be finite and at most LABEL_LIMIT in size: an ``inf`` or ``1e308``
    row is a data error like an unparseable label, named with its row (rows are never dropped
    for it: the value is wrong, not missing)."""
    if task.problem_type != "regression" or labels is None:
        return
    for at, v in zip(where, labels):
        if not math.isfinite(v):
            why = "is not a finite number"
        elif abs(v) > LABEL_LIMIT:
            why = f"is beyond +-{LABEL_LIMIT:.0e} (a placeholder or an id?)"
        else:
            continue
        raise DataError(
            f"{at}: regression label {v!r} in column {column!r} {why}; fix or remove the row "
            "(or scale the labels)"
        )


def _rotten_tomatoes(c: DataConfig, task: Task | None, cols: _Columns, report: dict):
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


def _modality(task: Task | None) -> str:
    return task.modality if task is not None else "text"


def _check_images(raws: dict[str, Raw], report: dict) -> None:
    """Every image opens (missing / corrupt -> DataError naming the row); one note for non-RGB modes."""
    modes: Counter = Counter()
    for s, raw in raws.items():
        modes.update(check_images(raw, s))
    note = mode_note(modes)
    if note:
        log.warning("note: %s", note)
        report.setdefault("notes", []).append(note)
    report["image_modes"] = dict(modes)


def _clean_splits(raws: dict[str, Raw], need_labels: bool, report: dict, modality: str = "text") -> None:
    dropped: dict[str, dict] = {}
    for s in list(raws):
        cleaner = clean if modality == "text" else clean_images
        raws[s], dropped[s] = cleaner(raws[s], need_labels=need_labels)
    report["rows_dropped"] = dropped
    report["dropped_empty"] = sum(d["empty"] for d in dropped.values())
    report["dropped_duplicate"] = sum(d["duplicate"] for d in dropped.values())
    report["dropped_missing_label"] = sum(d["missing_label"] for d in dropped.values())
    for s, raw in raws.items():
        if len(raw) == 0:
            raise DataError(
                f"the {s} data is empty after cleaning (empty/duplicate rows dropped: "
                f"{dropped[s]}); check --text-column/--label-column and the file contents"
            )


def _encode_labels(raws: dict[str, Raw], task: Task | None, c: DataConfig, fixed) -> tuple[Task, LabelSpace]:
    """Labels of all splits encoded jointly (a class seen only in validation is still known)."""
    order = list(raws)
    values = [v for s in order for v in (raws[s].labels or [])]
    if task is None:
        task = detect_task(values, [t for s in order for t in raws[s].texts])
    task = task.refine(values)
    if not task.needs_labels:
        return task, task.encode_labels([], c.num_labels, None)[1]
    enc, space = task.encode_labels(values, c.num_labels, fixed)
    start = 0
    for s in order:
        n = len(raws[s])
        raws[s].labels = enc[start : start + n]
        start += n
    return task, space


def _split(
    raws: dict[str, Raw], task: Task, c: DataConfig, cols: _Columns, output_dir: str | None, report: dict
) -> None:
    """Carve the missing splits out of train (see the module docstring); writes split_indices.json."""
    if "validation" in raws and "test" in raws:
        report["split"] = "given train/validation/test files"
        return
    ratios = list(c.split_ratios)
    train = raws["train"]
    strata = task.strata(train.labels) if train.labels is not None else None
    if "validation" in raws:  # train + validation given: carve test out of train
        if ratios[2] <= 0:
            report["split"] = "given train/validation; test = validation (split_ratios test = 0)"
            raws["test"] = raws["validation"]
            return
        r, names, how = (
            [ratios[0], ratios[2], 0.0],
            ("test",),
            "test carved out of train (ratio test/(train+test))",
        )
    elif "test" in raws:
        r, names = [ratios[0], ratios[1], 0.0], ("validation",)
        how = "validation carved out of train (ratio validation/(train+validation))"
    else:
        r, names, how = ratios, ("validation", "test"), "train/validation/test from one source"
    tr, a, b = split_indices(len(train), r, c.data_seed, strata, train.groups)
    new = {"train": train.take(tr), names[0]: train.take(a)}
    if len(names) == 2:
        new["test"] = train.take(b) if b else new["validation"]
        how += "" if b else "; test ratio 0 -> test = validation"
    raws.update(new)
    report["split"] = (
        how
        + (f", grouped by {cols.group!r}" if train.groups is not None else "")
        + (", stratified by label" if strata is not None else "")
    )
    saved: dict[str, Any] = {"seed": c.data_seed, "ratios": ratios, "group_column": cols.group}
    saved["note"] = "row numbers (0-based data rows) of the source train data"
    saved.update({s: list(new[s].rows) for s in SPLITS if s in new})
    if output_dir:
        path = os.path.join(output_dir, "split_indices.json")
        write_json_atomic(path, saved)
        report["split_indices"] = path


def _limit_and_augment(raws: dict[str, Raw], c: DataConfig, report: dict, modality: str = "text") -> None:
    """Seeded sample limits, the eval-rows-in-train count, then EDA copies of train rows (image
    presets are only checked here: the loader applies them per sample)."""
    test_is_val = raws["test"] is raws["validation"]
    for s, limit, salt in (
        ("train", c.max_train_samples, 1),
        ("validation", c.max_eval_samples, 2),
        ("test", c.max_eval_samples, 3),
    ):
        idx = subset(len(raws[s]), limit, c.data_seed, salt)
        if idx is not None:
            raws[s] = raws[s].take(idx)
    if test_is_val:
        raws["test"] = raws["validation"]

    def keys(r: Raw):
        texts = (tuple(t) if is_word_list(t) else t for t in r.texts)  # word lists: hashable keys
        return zip(texts, r.pairs or [None] * len(r))

    train_keys = set(keys(raws["train"]))
    report["eval_rows_also_in_train"] = {
        s: sum(k in train_keys for k in keys(raws[s])) for s in ("validation", "test")
    }
    report["augmented_rows"] = 0
    if not c.augment:
        return
    try:
        check_augment(c.augment, modality)
    except ConfigError as e:
        raise DataError(str(e)) from None
    if modality != "text":
        report["augment"] = str(c.augment)
        return
    if str(c.augment).lower() != "eda":
        raise DataError(f"unknown augment {c.augment!r}: use eda (or leave it unset)")
    if not 0 <= c.augment_prob <= 1:
        raise DataError(f"augment_prob must be in [0, 1], got {c.augment_prob}")
    tr = raws["train"]
    if tr.texts and is_word_list(tr.texts[0]):
        raise DataError("--augment eda edits texts and cannot keep word tags aligned; drop --augment")
    copies = augment_rows(tr.texts, tr.pairs, float(c.augment_prob), c.seed)
    raws["train"] = Raw(
        tr.texts + [x[1] for x in copies],
        tr.pairs + [x[2] for x in copies] if tr.pairs is not None else None,
        tr.labels + [tr.labels[x[0]] for x in copies] if tr.labels is not None else None,
        None,
        tr.rows + [tr.rows[x[0]] for x in copies],
    )
    report["augmented_rows"] = len(copies)


def _tokenize_splits(raws, task: Task, tokenizer, c: DataConfig, cols: _Columns, report: dict) -> dict:
    import datasets

    max_length = effective_max_length(tokenizer, c.max_length)
    splits, hits, built = {}, {}, {}
    for s in SPLITS:
        raw = raws[s]
        if id(raw) in built:  # test = validation: same object, tokenize once
            splits[s] = built[id(raw)]
            continue
        columns: dict[str, list] = {cols.text: raw.texts}
        if cols.pair:
            columns[cols.pair] = raw.pairs
        if task.needs_labels:
            columns["labels"] = raw.labels
        ds = datasets.Dataset.from_dict(columns)
        splits[s], hits[s] = tokenize(ds, tokenizer, cols.text, cols.pair, max_length, task, c.cache_dir)
        built[id(raw)] = splits[s]
    report["tokenization_cache_hit"] = hits
    report["max_length"] = max_length
    cut = {
        s: int(sum(d["truncated_words"])) for s, d in splits.items() if "truncated_words" in d.column_names
    }
    if cut:
        report["truncated_words"] = cut
        if any(cut.values()):
            log.warning(
                "data: words cut by --max-length %d (not trained on, not scored, predicted O): %s; "
                "raise --max-length to keep them",
                max_length,
                json.dumps(cut),
            )
    return splits


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
    if task.modality != "text":
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
        _check_numbers(task, cols["labels"], [f"{where} row {i + 1}" for i in range(len(values))], label_col)
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
        raw, used = table_raw(ds, path, f"--file {path}", task, cfg, need_label, False)
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
