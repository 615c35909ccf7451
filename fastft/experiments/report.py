"""compare.json / compare.md / compare.png from the runs' metrics (see :mod:`fastft.experiments.compare`)."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from fastft.experiments.stats import lower_is_better, paired_tests, summarize

__all__ = ["write_report", "analyse", "winner_sentence"]

# resources after the task metrics, in this order
_RESOURCES = ("train_runtime_s", "train_samples_per_s", "peak_memory_mb", "trainable_params")


def _metric_order(records: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for r in records:
        for k in r.get("metrics") or {}:
            if k not in names:
                names.append(k)
    task = [n for n in names if n not in _RESOURCES]
    return task + [n for n in _RESOURCES if n in names]


def analyse(
    arms: list[str], records: list[dict[str, Any]], baseline: str, metrics: list[str]
) -> tuple[dict, dict]:
    """Per arm and metric: summary statistics, and the paired tests vs ``baseline`` on shared seeds."""
    by_arm: dict[str, dict[int, dict[str, float]]] = {a: {} for a in arms}
    for r in records:
        if r.get("status") == "ok":
            by_arm[r["arm"]][r["seed"]] = r["metrics"]
    summary: dict[str, dict[str, Any]] = {}
    tests: dict[str, dict[str, Any]] = {}
    for arm in arms:
        runs = by_arm[arm]
        summary[arm] = {}
        tests[arm] = {}
        for m in metrics:
            vals = {s: v[m] for s, v in runs.items() if m in v}
            summary[arm][m] = {**summarize([vals[s] for s in sorted(vals)]), "values": vals}
            if arm == baseline:
                continue
            base = {s: v[m] for s, v in by_arm[baseline].items() if m in v}
            shared = sorted(set(vals) & set(base))
            tests[arm][m] = {
                "seeds": shared,
                **paired_tests([vals[s] for s in shared], [base[s] for s in shared]),
            }
    return summary, tests


def _p(p: float | None) -> str:
    return "n/a" if p is None else (f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}")


def winner_sentence(
    summary: dict, tests: dict, baseline: str, metric: str, alpha: float
) -> tuple[str | None, str]:
    """(the significant winner or None, one plain sentence). Significance: paired t-test p < alpha."""
    means = {a: s[metric]["mean"] for a, s in summary.items() if s.get(metric, {}).get("mean") is not None}
    if baseline not in means or len(means) < 2:
        return None, f"not enough finished runs to compare {metric} against the baseline {baseline}."
    low = lower_is_better(metric)
    ranked = sorted(means, key=lambda a: means[a], reverse=not low)
    best = ranked[0]
    other = best if best != baseline else ranked[1]
    t = tests[other][metric]
    sig = t["t_p"] is not None and t["t_p"] < alpha
    how = "lower" if low else "higher"
    evidence = (
        f"paired t-test p={_p(t['t_p'])}, Wilcoxon p={_p(t['wilcoxon_p'])}, {t['n_pairs']} paired seeds"
    )
    verdict = f"significant at alpha={alpha:g}" if sig else f"not significant at alpha={alpha:g}"
    if best != baseline:
        text = (
            f"{best} has the best mean {metric} ({how} is better): {means[best]:.4g} vs {means[baseline]:.4g} "
            f"for the baseline {baseline} (difference {means[best] - means[baseline]:+.4g}); "
            f"the difference is {verdict} ({evidence})."
        )
    else:
        text = (
            f"the baseline {baseline} has the best mean {metric} ({how} is better): {means[baseline]:.4g}; "
            f"the runner-up {other} has {means[other]:.4g} (difference {means[other] - means[baseline]:+.4g}), "
            f"{verdict} ({evidence})."
        )
    if not sig:
        text += " No arm can be called better on this evidence; more seeds would narrow it."
    return (best if sig else None), text


def _num(v: float | None) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if abs(v) >= 1e4:
        return f"{v:,.0f}"
    return f"{v:.4g}"


def _markdown(doc: dict[str, Any]) -> str:
    metrics, arms, base = doc["metrics"], doc["arms"], doc["baseline"]
    summary, tests = doc["summary"], doc["tests"]
    lines = ["# fastft compare", ""]
    if doc.get("command"):
        lines += ["```", doc["command"], "```", ""]
    lines += [
        f"Seeds: {', '.join(map(str, doc['seeds']))}. Baseline: {base}. Primary metric: {doc['metric']} "
        f"(test split). Mean ± sample std over seeds.",
        "",
        f"**Result:** {doc['sentence']}",
        "",
        "| arm | runs | " + " | ".join(metrics) + " |",
        "| --- | --- | " + " | ".join("---" for _ in metrics) + " |",
    ]
    for arm in arms:
        ok = sum(1 for r in doc["runs"] if r["arm"] == arm and r["status"] == "ok")
        cells = []
        for m in metrics:
            s = summary[arm][m]
            cells.append(_num(s["mean"]) + ("" if s["std"] is None else f" ± {_num(s['std'])}"))
        label = f"{arm} (baseline)" if arm == base else arm
        lines.append(f"| {label} | {ok}/{len(doc['seeds'])} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Confidence intervals and paired tests vs the baseline",
        "",
        "95% CI of the mean (t distribution); difference = arm − baseline on the shared seeds; "
        "p-values of the paired t-test and the Wilcoxon signed-rank test (scipy).",
        "",
        "| metric | arm | mean | 95% CI | difference | t-test p | Wilcoxon p |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in metrics:
        for arm in arms:
            s = summary[arm][m]
            ci = "n/a" if s["ci_low"] is None else f"[{_num(s['ci_low'])}, {_num(s['ci_high'])}]"
            t = tests.get(arm, {}).get(m)
            diff = "—" if t is None else _num(t["mean_diff"])
            tp = "—" if t is None else _p(t["t_p"])
            wp = "—" if t is None else _p(t["wilcoxon_p"])
            lines.append(f"| {m} | {arm} | {_num(s['mean'])} | {ci} | {diff} | {tp} | {wp} |")
    failed = [r for r in doc["runs"] if r["status"] != "ok"]
    if failed:
        lines += ["", "## Failed runs", ""]
        for r in failed:
            lines.append(
                f"- {r['arm']} seed {r['seed']} ({r['status']}): `{r.get('error')}` — {r['run_dir']}"
            )
    return "\n".join(lines) + "\n"


def _plot(doc: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    metrics, arms = doc["metrics"], doc["arms"]
    ncols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    for i, m in enumerate(metrics):
        ax = axes[i // ncols][i % ncols]
        for j, arm in enumerate(arms):
            s = doc["summary"][arm][m]
            vals = [s["values"][k] for k in sorted(s["values"])]
            xs = [j + (k - (len(vals) - 1) / 2) * 0.06 for k in range(len(vals))]
            ax.scatter(xs, vals, s=18, alpha=0.7, color=f"C{j % 10}", zorder=3)
            if s["mean"] is not None:
                lo = s["mean"] - (s["ci_low"] if s["ci_low"] is not None else s["mean"])
                ax.errorbar([j + 0.25], [s["mean"]], yerr=[[lo], [lo]], fmt="D", color="black", capsize=3)
        ax.set_xticks(range(len(arms)))
        ax.set_xticklabels(arms, rotation=20, ha="right", fontsize=8)
        ax.set_title(m + (" (lower is better)" if lower_is_better(m) else ""), fontsize=9)
        ax.grid(alpha=0.3)
    for k in range(len(metrics), nrows * ncols):
        axes[k // ncols][k % ncols].axis("off")
    fig.suptitle("fastft compare: every seed (dots), mean with 95% CI (diamond)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_report(
    output_dir: str,
    *,
    arms: list[str],
    varied: dict[str, dict[str, Any]],
    seeds: list[int],
    records: list[dict[str, Any]],
    baseline: str,
    alpha: float,
    metric: str | None,
    command: str = "",
) -> dict[str, Any]:
    metrics = _metric_order(records)
    if metric is None:
        metric = next((r["metric_for_best"] for r in records if r.get("metric_for_best") in metrics), None)
        metric = metric or (metrics[0] if metrics else "accuracy")
    elif metrics and metric not in metrics:
        from fastft.train.errors import ConfigError

        raise ConfigError(f"--metric {metric!r} is not in the runs' results; use one of {', '.join(metrics)}")
    summary, tests = analyse(arms, records, baseline, metrics)
    winner, sentence = winner_sentence(summary, tests, baseline, metric, alpha) if metrics else (None, "")
    if not metrics:
        sentence = "no run finished: nothing to compare (see the failed runs)."
    doc = {
        "arms": arms,
        "varied": varied,
        "seeds": seeds,
        "baseline": baseline,
        "metric": metric,
        "alpha": alpha,
        "metrics": metrics,
        "summary": summary,
        "tests": tests,
        "winner": winner,
        "sentence": sentence,
        "runs": records,
        "command": command,
    }
    _atomic(os.path.join(output_dir, "compare.json"), json.dumps(doc, indent=2, default=str) + "\n")
    _atomic(os.path.join(output_dir, "compare.md"), _markdown(doc))
    if metrics:
        _plot(doc, os.path.join(output_dir, "compare.png"))
    print(f"\n{sentence}\nreport: {os.path.join(output_dir, 'compare.md')} (+ compare.json, compare.png)")
    return doc
