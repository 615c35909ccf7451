"""Cleaning: rows with empty text (or empty pair text) and rows without a label are dropped; then
duplicates (same stripped text, + pair), keeping the first and its label. Counted in the report.

Pre-split word lists (token classification: the text of each row is a list of words) are checked
instead of dropped: an empty sentence, an empty word, a label that is not a list of tags or a
token/tag count mismatch raises ``DataError`` naming the row, and the split's tags must follow one
tag scheme (:func:`fastft.train.tagging.validate_sentences`). Rows without tags are dropped and
duplicate sentences (same words and tags) are dropped, as for text."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable

import numpy as np

from fastft.train.data.sources import Raw

__all__ = ["clean", "drop_rows", "is_missing", "as_text", "is_word_list", "as_words"]


def is_word_list(v) -> bool:
    """A pre-split sentence (list/tuple/array of words) rather than a text."""
    return isinstance(v, (list, tuple, np.ndarray))


def as_words(v):
    """Word lists as lists of str; anything else as text (``as_text``)."""
    return [str(w) for w in v] if is_word_list(v) else as_text(v)


def is_missing(v) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, str) and not v.strip()


def as_text(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return v if isinstance(v, str) else str(v)


def clean(raw: Raw, need_labels: bool) -> tuple[Raw, dict]:
    if raw.texts and any(is_word_list(t) for t in raw.texts):
        return _clean_words(raw, need_labels)
    raw.texts = [as_text(t) for t in raw.texts]
    if raw.pairs is not None:
        raw.pairs = [as_text(t) for t in raw.pairs]
    pairs = raw.pairs

    def key(i: int):
        t, p = raw.texts[i].strip(), pairs[i].strip() if pairs is not None else None
        return None if not t or (pairs is not None and not p) else (t, p)

    return drop_rows(raw, need_labels, key)


def drop_rows(raw: Raw, need_labels: bool, key: Callable[[int], Hashable | None]) -> tuple[Raw, dict]:
    """Keep the first row of each ``key(i)``; drop rows whose key is None (empty) and, when labels are
    needed, rows without a label. Shared by the text and image cleaning so both count alike."""
    keep, seen = [], set()
    empty = missing = dup = 0
    for i in range(len(raw.texts)):
        k = key(i)
        if k is None:
            empty += 1
            continue
        if need_labels and raw.labels is not None and is_missing(raw.labels[i]):
            missing += 1
            continue
        if k in seen:
            dup += 1
            continue
        seen.add(k)
        keep.append(i)
    return raw.take(keep), {"empty": empty, "missing_label": missing, "duplicate": dup}


def _row_name(raw: Raw, i: int) -> str:
    return raw.where[i] if raw.where is not None else f"row {raw.rows[i] + 1}"


def _clean_words(raw: Raw, need_labels: bool) -> tuple[Raw, dict]:
    """The word-list path of :func:`clean` (see the module docstring)."""
    from fastft.train import tagging
    from fastft.train.errors import DataError

    keep, seen, sentences = [], set(), []
    missing = dup = 0
    for i, t in enumerate(raw.texts):
        at = _row_name(raw, i)
        if not is_word_list(t):
            raise DataError(
                f"{at}: the text column mixes word lists and {type(t).__name__}; give a list per row"
            )
        words = [as_text(w).strip() for w in t]
        if not words:
            raise DataError(f"{at}: empty sentence (no words); drop the row")
        if any(not w for w in words):
            raise DataError(
                f"{at}: word {next(k for k, w in enumerate(words) if not w) + 1} is empty; drop it"
            )
        raw.texts[i] = words
        if not need_labels:
            keep.append(i)
            continue
        tags = raw.labels[i]
        if tags is None or (isinstance(tags, float) and math.isnan(tags)):
            missing += 1
            continue
        if not is_word_list(tags):
            raise DataError(f"{at}: the label must be a list of tags (one per word), got {tags!r}")
        tags = [str(x) for x in tags]
        raw.labels[i] = tags
        sentences.append({"tokens": words, "tags": tags, "where": at})
        key = (tuple(words), tuple(tags))
        if key in seen:
            dup += 1
            continue
        seen.add(key)
        keep.append(i)
    if sentences:
        tagging.validate_sentences(sentences)  # counts, empty, one scheme; names the row
    return raw.take(keep), {"empty": 0, "missing_label": missing, "duplicate": dup}
