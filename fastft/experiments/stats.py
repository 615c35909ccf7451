"""Summary statistics and paired tests for ``fastft compare`` (scipy)."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["summarize", "paired_tests", "lower_is_better"]

_LOWER = ("loss", "mse", "mae", "rmse", "perplexity", "hamming_loss")
_LOWER_RESOURCES = ("train_runtime_s", "peak_memory_mb", "trainable_params")


def lower_is_better(metric: str) -> bool:
    """Loss-like metrics and resources (time, memory, parameters) are better when lower."""
    m = metric.lower()
    return m in _LOWER or m.endswith("_loss") or m in _LOWER_RESOURCES


def _scipy_stats():
    try:
        from scipy import stats
    except ImportError:  # pragma: no cover - scipy is in the sweep / dev extras
        from fastft.train.errors import ConfigError

        raise ConfigError("fastft compare needs scipy: pip install fastft[sweep]") from None
    return stats


def summarize(values: list[float], confidence: float = 0.95) -> dict[str, Any]:
    """n, mean, sample std (ddof 1), and the two-sided t confidence interval of the mean."""
    n = len(values)
    out: dict[str, Any] = {"n": n, "mean": None, "std": None, "ci_low": None, "ci_high": None}
    if n == 0:
        return out
    mean = sum(values) / n
    out["mean"] = mean
    if n < 2:
        return out
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    out["std"] = std
    half = _scipy_stats().t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    out["ci_low"], out["ci_high"] = mean - half, mean + half
    return out


def _finite(p: Any) -> float | None:
    p = float(p)
    return p if math.isfinite(p) else None


def paired_tests(arm: list[float], base: list[float]) -> dict[str, Any]:
    """Paired t-test and Wilcoxon signed-rank of ``arm`` vs ``base`` (same seeds, same order).

    p-values are None when a test is undefined: fewer than 2 pairs, or every difference the same
    (t) / zero (Wilcoxon)."""
    stats = _scipy_stats()
    diffs = [a - b for a, b in zip(arm, base)]
    n = len(diffs)
    out: dict[str, Any] = {
        "n_pairs": n,
        "mean_diff": sum(diffs) / n if n else None,
        "t_stat": None,
        "t_p": None,
        "wilcoxon_stat": None,
        "wilcoxon_p": None,
    }
    if n < 2:
        return out
    if len(set(diffs)) > 1:
        t = stats.ttest_rel(arm, base)
        out["t_stat"], out["t_p"] = _finite(t.statistic), _finite(t.pvalue)
    if any(d != 0 for d in diffs):
        w = stats.wilcoxon(arm, base)
        out["wilcoxon_stat"], out["wilcoxon_p"] = _finite(w.statistic), _finite(w.pvalue)
    return out
