"""Reading ``metrics.jsonl`` back: one JSON record per line (``type`` train / eval / test / end).

The run logger appends the lines; the curve plot, resume (dropping a killed run's tail) and reports
read them back through :func:`read_records` / :func:`iter_lines`, so that a torn or foreign line is
skipped the same way everywhere.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

__all__ = ["iter_lines", "read_records"]


def iter_lines(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(raw line, record)`` of each JSON object line of ``path``, in file order; a line that is
    not a JSON object (a write cut off mid-line) is skipped; a missing file yields nothing."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield line, record


def read_records(path: str, type_: str | None = None) -> list[dict[str, Any]]:
    """The records of ``path`` (only those whose ``type`` is ``type_`` when given)."""
    return [r for _, r in iter_lines(path) if type_ is None or r.get("type") == type_]
