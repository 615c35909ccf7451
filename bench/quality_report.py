"""Summaries of the quality benchmark: per-trainer means over seeds, paired differences against
the HF Trainer with a paired t-test, and the printed tables (see :mod:`bench.bench_quality`)."""

from typing import Any

import numpy as np

IMPLS = ("fastft", "fastft_cw", "hf_trainer")


SETS = ("test", "test_large")  # the scored sets (test_large only with --large-test)


def means(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per setting and trainer: mean test accuracy / macro-F1 over the seeds (``test_large`` beside them
    when scored), and ``paired``: each fastft variant minus HF on the same seeds, with a paired t-test."""
    out: dict[str, dict[str, Any]] = {}
    for e in entries:
        cell = out.setdefault(str(e["config"]), {"hp": {k: v for k, v in e["hp"].items() if k != "seed"}})
        for impl in IMPLS:
            for name in SETS:
                t = (e.get(impl) or {}).get(name)
                if not t:
                    continue
                rec = cell.setdefault(impl, {})
                rec = rec if name == "test" else rec.setdefault(name, {})
                for k, v in (
                    ("seeds", e["hp"]["seed"]),
                    ("accuracy", t["accuracy"]),
                    ("f1_macro", t["f1_macro"]),
                ):
                    rec.setdefault(k, []).append(v)
    for cell in out.values():
        for impl in IMPLS:
            for rec in (cell.get(impl), (cell.get(impl) or {}).get("test_large")):
                if rec and "seeds" in rec:
                    for k in ("accuracy", "f1_macro"):
                        rec[f"mean_{k}"] = float(np.mean(rec[k]))
        cell["paired"] = _paired(cell)
    return out


def _paired(cell: dict[str, Any]) -> dict[str, Any]:
    """{"fastft_cw - hf_trainer": {"test": {"accuracy": {"n", "mean_diff", "p"}, ...}, ...}, ...}"""
    out: dict[str, Any] = {}
    hf = cell.get("hf_trainer")
    for impl in ("fastft", "fastft_cw"):
        if impl not in cell or not hf:
            continue
        for name in SETS:
            a = cell[impl] if name == "test" else cell[impl].get(name)
            b = hf if name == "test" else hf.get(name)
            if not a or not b or "seeds" not in a or "seeds" not in b:
                continue
            common = sorted(set(a["seeds"]) & set(b["seeds"]))
            for k in ("accuracy", "f1_macro"):
                x = np.array([a[k][a["seeds"].index(sd)] for sd in common])
                y = np.array([b[k][b["seeds"].index(sd)] for sd in common])
                out.setdefault(f"{impl} - hf_trainer", {}).setdefault(name, {})[k] = _paired_test(x, y)
    return out


def _paired_test(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    d = x - y
    rec: dict[str, Any] = {"n": int(len(d)), "mean_diff": float(d.mean()) if len(d) else None, "p": None}
    if len(d) >= 2 and d.std() > 1e-12:  # a constant difference (up to rounding) has no t-test
        from scipy.stats import ttest_rel

        rec["p"] = float(ttest_rel(x, y).pvalue)
        rec["se"] = float(d.std(ddof=1) / np.sqrt(len(d)))
    return rec


def means_table(summary: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'setting':<30} {'impl':<10} {'set':<10} {'seeds':>5} {'mean acc':>9} {'mean macroF1':>13}"]
    for cell in summary.values():
        hp = cell["hp"]
        name = f"lr {hp['lr']:g} bs {hp['batch_size']} ep {hp['epochs']} len {hp['max_length']}"
        for impl in IMPLS:
            for set_name in SETS:
                r = cell.get(impl) if set_name == "test" else (cell.get(impl) or {}).get(set_name)
                if r and "seeds" in r:
                    lines.append(
                        f"{name:<30} {impl:<10} {set_name:<10} {len(r['seeds']):>5} {r['mean_accuracy']:>9.4f} "
                        f"{r['mean_f1_macro']:>13.4f}"
                    )
        for pair, by_set in cell.get("paired", {}).items():
            for set_name, by_metric in by_set.items():
                parts = []
                for k, r in by_metric.items():
                    p = f"p={r['p']:.2f}" if r.get("p") is not None else "p=-"
                    se = f" se {r['se']:.4f}" if r.get("se") is not None else ""
                    parts.append(f"{k} {r['mean_diff']:+.4f}{se} {p}")
                lines.append(f"  paired {pair} on {set_name} (n={r['n']}): " + "; ".join(parts))
    return "\n".join(lines)


def table(entries: list[dict[str, Any]]) -> str:
    large = any((e.get(i) or {}).get("test_large") for e in entries for i in IMPLS)
    lines = [
        f"{'run':<42} {'impl':<10} {'test acc':>8} {'macroF1':>8}  predicted            warned  collapsed"
        + ("  large acc  large F1" if large else "")
    ]
    for e in entries:
        hp = e["hp"]
        name = f"lr {hp['lr']:g} bs {hp['batch_size']} ep {hp['epochs']} len {hp['max_length']}"
        name += f" seed {hp['seed']}"
        for impl in IMPLS:
            if impl not in e:
                continue
            r = e[impl]
            t = r.get("test")
            if not t:
                lines.append(f"{name:<42} {impl:<10} failed rc={r.get('rc')} {r.get('error_tail', '')}")
                continue
            hist = " ".join(f"{k}:{v}" for k, v in t["predicted"].items())
            warned = str(r.get("warned")) if impl != "hf_trainer" else "-"
            row = (
                f"{name:<42} {impl:<10} {t['accuracy']:>8.4f} {t['f1_macro']:>8.4f}  {hist:<20} {warned:<7} "
                f"{str(bool(t['collapse'])):<9}"
            )
            big = r.get("test_large")
            lines.append(row + (f"  {big['accuracy']:>9.4f} {big['f1_macro']:>9.4f}" if big else ""))
    return "\n".join(lines)
