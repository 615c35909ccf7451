"""``prepare_data`` and its steps after the sources: cleaning, labels, splits, limits + augmentation,
tokenization (the decisions are listed in :mod:`fastft.train.data.pipeline`)."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastft.train.data.clean import is_word_list
from fastft.train.data.modalities import modality_of
from fastft.train.data.pipeline.gather import (
    Columns,
    data_fingerprints,
    load_sources,
    requested_task,
    source_name,
)
from fastft.train.data.sources import (
    Raw,
    check_cache_dir,
)
from fastft.train.data.split import split_indices, subset, write_json_atomic
from fastft.train.errors import DataError
from fastft.train.tasks import LabelSpace, Task, detect_task

if TYPE_CHECKING:
    from fastft.train.config import DataConfig
    from fastft.train.data.modalities import Modality

__all__ = ["PreparedData", "prepare_data", "check_numbers", "SPLITS"]

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


def prepare_data(cfg: DataConfig, tokenizer: Any, output_dir: str | None = None) -> PreparedData:
    """Load, clean, label, split, (augment) and tokenize the data described by ``cfg`` (a
    :class:`~fastft.train.config.DataConfig`, e.g. a ``TrainConfig``)."""
    task = requested_task(cfg)
    check_cache_dir(cfg.cache_dir)
    report: dict[str, Any] = {}
    raws, cols, fixed, task = load_sources(cfg, task, report)
    report["data_files"] = data_fingerprints(cfg)  # --resume sees a file changed under its name
    modality = modality_of(task)  # None: --task auto on a data file (text)
    _clean_splits(raws, task is None or task.needs_labels, report, modality)
    modality.check_rows(raws, report)
    task, space = _encode_labels(raws, task, cfg, fixed)
    for s, raw in raws.items():
        check_numbers(task, raw.labels, [f"{source_name(cfg, s)} row {r + 1}" for r in raw.rows], cols.label)
    task = task.configure(cfg)
    _split(raws, task, cfg, cols, output_dir, report)
    modality = modality_of(task)  # the detected / refined / configured task's
    _limit_and_augment(raws, cfg, report, modality)
    for w in task.split_warnings(raws, space):
        log.warning("data: %s", w)
        report.setdefault("warnings", []).append(w)
    splits = modality.build_splits(raws, task, tokenizer, cfg, cols, report)
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


LABEL_LIMIT = 1e15


def check_numbers(task: Task, labels, where: list[str], column: str | None) -> None:
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


def _clean_splits(raws: dict[str, Raw], need_labels: bool, report: dict, modality: Modality) -> None:
    dropped: dict[str, dict] = {}
    for s in list(raws):
        raws[s], dropped[s] = modality.clean(raws[s], need_labels)
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
    raws: dict[str, Raw], task: Task, c: DataConfig, cols: Columns, output_dir: str | None, report: dict
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


def _limit_and_augment(raws: dict[str, Raw], c: DataConfig, report: dict, modality: Modality) -> None:
    """Seeded sample limits, the eval-rows-in-train count, then the input kind's augmentation (EDA
    copies of train rows; image presets are only checked here: the loader applies them per sample)."""
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
    modality.augment(raws, c, report)
