"""Splitting: seeded, stratified train/validation/test splits, optionally by group, and sample limits."""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

import numpy as np

from fastft.train.errors import DataError

__all__ = ["split_indices", "subset", "write_json_atomic"]


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


def subset(n: int, limit: int | None, seed: int, salt: int) -> list[int] | None:
    if limit is None or limit <= 0 or limit >= n:
        return None
    rng = np.random.default_rng([abs(int(seed)), salt])
    return sorted(rng.choice(n, size=limit, replace=False).tolist())


def write_json_atomic(path: str, obj: Any) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)
