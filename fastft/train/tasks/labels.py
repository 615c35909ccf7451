"""Label helpers shared by the task files (parsing and naming raw label values)."""

from __future__ import annotations

import ast
import re

import numpy as np

from fastft.train.errors import DataError

_MULTILABEL_SPLIT = re.compile(r"[,;|]")


def is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def parses_float(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def name_sort_key(name: str):
    """Numeric names in numeric order first, then the others alphabetically."""
    try:
        return (0, float(name), name)
    except ValueError:
        return (1, 0.0, name)


def multi_names(v) -> list[str]:
    """A multi-label value -> its label names: a list, a list literal, or ``a;b|c``/``a, b`` text."""
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


def mismatch(num_labels: int, names: list[str]) -> DataError:
    shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
    return DataError(
        f"labels do not match num_labels={num_labels}: found {len(names)} distinct labels "
        f"({shown}); set num_labels to {len(names)} or fix the label column"
    )


def unknown_labels(unknown: list, label2id: dict) -> DataError:
    return DataError(
        f"unknown labels {unknown[:5]} (the model knows {list(label2id)[:10]}); fix the label column"
    )
