"""Cleaning: rows with empty text (or empty pair text) and rows without a label are dropped; then
duplicates (same stripped text, + pair), keeping the first and its label. Counted in the report."""

from __future__ import annotations

import math

from fastft.train.data.sources import Raw

__all__ = ["clean", "is_missing", "as_text"]


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
    raw.texts = [as_text(t) for t in raw.texts]
    if raw.pairs is not None:
        raw.pairs = [as_text(t) for t in raw.pairs]
    keep, seen = [], set()
    empty = missing = dup = 0
    for i, t in enumerate(raw.texts):
        key_t = t.strip()
        key_p = raw.pairs[i].strip() if raw.pairs is not None else None
        if not key_t or (raw.pairs is not None and not key_p):
            empty += 1
            continue
        if need_labels and is_missing(raw.labels[i]):
            missing += 1
            continue
        key = (key_t, key_p)
        if key in seen:
            dup += 1
            continue
        seen.add(key)
        keep.append(i)
    return raw.take(keep), {"empty": empty, "missing_label": missing, "duplicate": dup}
