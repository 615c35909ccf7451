"""Reading tagged sentences: CoNLL files and JSON/JSONL/HF-dataset records -> ``{tokens, tags, line,
where}`` dicts (see :mod:`fastft.train.tagging`)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from fastft.train.errors import DataError

__all__ = [
    "read_conll",
    "read_records",
]


def read_conll(path: str) -> list[dict]:
    """Sentences of a CoNLL-style file (``.conll``, ``.txt``, ``.tsv``); see the module docstring."""
    if not os.path.isfile(path):
        raise DataError(f"{path!r} does not exist: check the path")
    name = os.path.basename(path)
    sentences: list[dict] = []
    tokens: list[str] = []
    tags: list[str] = []
    first = 0

    def flush() -> None:
        if tokens:
            sentences.append(
                {"tokens": list(tokens), "tags": list(tags), "line": first, "where": f"{name}:{first}"}
            )
            tokens.clear()
            tags.clear()

    try:
        # utf-8-sig drops a BOM; universal newlines turn CRLF into LF.
        with open(path, encoding="utf-8-sig") as f:
            for lineno, raw in enumerate(f, 1):
                line = raw.strip()
                fields = [c.strip() for c in line.split("\t")] if "\t" in line else line.split()
                fields = [c for c in fields if c]
                if not fields or fields[0] == "-DOCSTART-":
                    flush()
                    continue
                if len(fields) < 2:
                    raise DataError(
                        f"{name}:{lineno}: {line!r} has one column; each line needs a token and its tag "
                        "(e.g. 'Paris B-LOC'), with blank lines between sentences"
                    )
                if not tokens:
                    first = lineno
                tokens.append(fields[0])
                tags.append(fields[-1])
    except UnicodeDecodeError as e:
        raise DataError(
            f"{name}: not UTF-8 text ({e.reason} at byte {e.start}); re-save it as UTF-8"
        ) from None
    flush()
    if not sentences:
        raise DataError(f"{name}: no sentences found; write one 'token tag' pair per line")
    return sentences


def _record_tags(tags: Any, names: Sequence[str] | None, at: str, column: str) -> list[str]:
    out = []
    for t in tags:
        if isinstance(t, str):
            out.append(t)
        elif isinstance(t, (int, np.integer)) and not isinstance(t, bool):
            if names is None:
                raise DataError(
                    f"{at}: {column!r} holds integer tags but no tag names are known; "
                    "use string tags (B-PER) or an HF dataset whose tag column is a sequence of ClassLabel"
                )
            if not 0 <= int(t) < len(names):
                raise DataError(f"{at}: tag id {int(t)} is outside the {len(names)} tag names")
            out.append(names[int(t)])
        else:
            raise DataError(f"{at}: {column!r} must be a list of tag strings, got an item {t!r}")
    return out


def read_records(
    records: Iterable[dict],
    tokens_column: str = "tokens",
    tags_column: str = "tags",
    names: Sequence[str] | None = None,
    source: str = "data",
) -> list[dict]:
    """Sentences from JSON/JSONL rows or an HF dataset: ``row[tokens_column]`` and ``row[tags_column]``
    are lists. ``names`` maps integer tags to strings (an HF ``Sequence(ClassLabel)`` feature's names).
    Counts and the scheme are checked by ``validate_sentences``."""
    sentences = []
    for i, row in enumerate(records):
        at = f"{source} row {i + 1}"
        for col, flag in ((tokens_column, "--tokens-column"), (tags_column, "--label-column")):
            if col not in row:
                cols = ", ".join(map(str, row))
                raise DataError(f"{at}: column {col!r} not found; columns are: {cols} (set {flag})")
        toks, tags = row[tokens_column], row[tags_column]
        if isinstance(toks, str) or not isinstance(toks, Sequence | np.ndarray):
            raise DataError(f"{at}: {tokens_column!r} must be a list of words, got {type(toks).__name__}")
        if isinstance(tags, str) or not isinstance(tags, Sequence | np.ndarray):
            raise DataError(f"{at}: {tags_column!r} must be a list of tags, got {type(tags).__name__}")
        if any(t is None or isinstance(t, (list, dict)) for t in toks):
            raise DataError(
                f"{at}: {tokens_column!r} holds an empty or nested item; give one string per word"
            )
        tokens = [str(t) for t in toks]
        sentences.append(
            {"tokens": tokens, "tags": _record_tags(tags, names, at, tags_column), "line": i + 1, "where": at}
        )
    return sentences


# ----------------------------------------------------------------------------------------- schemes
