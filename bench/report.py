"""Markdown tables and PNG plots from a raw results file.

    python -m bench.report                       # newest bench/results/*.json
    python -m bench.report bench/results/cpu-2026-11-22.json

Writes beside the JSON: ``<stem>.md`` (every part's table, ratios against each baseline, targets),
``<stem>-<part>-<name>.png`` (median time with p20–p80 bars against sequence length / tokens for
each kernel, one line per implementation) and ``<stem>-e2e.png`` (end-to-end bar chart:
samples/s and peak memory per scenario and implementation, ratio to the baseline on the bars).

The x axis of a kernel plot is the first of the record fields ``x``, ``seq_len``, ``tokens``,
``numel`` or, in a dict ``shape``, ``S``/``T``/``N``/``seq``/``seq_len``/``tokens`` -- bench parts
choose it by what they put there. Rows without one are only tabled.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, load_results, markdown_report

X_FIELDS = ("x", "seq_len", "tokens", "numel")
X_SHAPE_KEYS = ("S", "T", "N", "seq", "seq_len", "tokens")


def x_of(rec: dict[str, Any]) -> tuple[str, float] | None:
    """(axis label, value) of a row's plot x coordinate, or None."""
    for k in X_FIELDS:
        v = rec.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return k, float(v)
    shape = rec.get("shape")
    if isinstance(shape, dict):
        for k in X_SHAPE_KEYS:
            v = shape.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return k, float(v)
    return None


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_")


def _series_key(rec: dict[str, Any], xkey: str) -> str:
    """What else (besides x) distinguishes rows of one plot: the other shape entries + dtype."""
    shape = rec.get("shape")
    rest = ""
    if isinstance(shape, dict):
        rest = ",".join(f"{k}={v}" for k, v in shape.items() if k != xkey)
    return f"{rest} {rec.get('dtype') or ''}".strip()


def kernel_plots(data: dict[str, Any], stem: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: list[Path] = []
    device = data.get("environment", {}).get("device", "")
    for part, body in data.get("parts", {}).items():
        if part == "e2e":
            continue
        by_name: dict[str, list[dict]] = defaultdict(list)
        for r in body.get("records", []):
            if r.get("status", "ok") == "ok" and r.get("median_ms") is not None and x_of(r) is not None:
                by_name[r["name"]].append(r)
        for name, recs in by_name.items():
            xkey = x_of(recs[0])[0]
            # one line per (impl, other shape entries, dtype)
            lines: dict[str, list[dict]] = defaultdict(list)
            for r in recs:
                lines[f"{r['impl']} {_series_key(r, xkey)}".strip()].append(r)
            if not any(len(v) > 1 for v in lines.values()):
                continue  # a single point per line says nothing a table does not
            fig, ax = plt.subplots(figsize=(7, 4.5))
            for label, rs in sorted(lines.items()):
                rs = sorted(rs, key=lambda r: x_of(r)[1])
                xs = [x_of(r)[1] for r in rs]
                ys = [r["median_ms"] for r in rs]
                lo = [max(0.0, r["median_ms"] - (r.get("p20_ms") or r["median_ms"])) for r in rs]
                hi = [max(0.0, (r.get("p80_ms") or r["median_ms"]) - r["median_ms"]) for r in rs]
                ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=label)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(xkey)
            ax.set_ylabel("time per call (ms, median, p20–p80)")
            ax.set_title(f"{part}: {name}\n{device}", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
            fig.tight_layout()
            path = stem.with_name(f"{stem.name}-{_slug(part)}-{_slug(name)}.png")
            fig.savefig(path, dpi=110)
            plt.close(fig)
            out.append(path)
    return out


def e2e_plot(data: dict[str, Any], stem: Path) -> Path | None:
    body = data.get("parts", {}).get("e2e")
    if not body:
        return None
    recs = [r for r in body.get("records", []) if r.get("status", "ok") == "ok" and r.get("samples_per_s")]
    if not recs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[dict]] = defaultdict(list)
    for r in recs:
        shape = r.get("shape")
        extra = f" ({shape.get('lengths')})" if isinstance(shape, dict) and shape.get("lengths") else ""
        groups[f"{r['name']}{extra}"].append(r)
    impls = sorted({r["impl"] for r in recs}, key=lambda s: (s == "fastft", s))
    has_mem = any(r.get("peak_mem_bytes") for r in recs)
    ncols = 2 if has_mem else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 4.5), squeeze=False)
    width = 0.8 / max(len(impls), 1)
    names = list(groups)
    for j, (field, ylabel) in enumerate(
        (("samples_per_s", "samples/s"), ("peak_mem_bytes", "peak MiB"))[:ncols]
    ):
        ax = axes[0][j]
        for i, impl in enumerate(impls):
            xs, ys, texts = [], [], []
            for k, g in enumerate(names):
                r = next((r for r in groups[g] if r["impl"] == impl), None)
                if r is None or r.get(field) is None:
                    continue
                v = r[field] / 2**20 if field == "peak_mem_bytes" else r[field]
                xs.append(k + (i - (len(impls) - 1) / 2) * width)
                ys.append(v)
                ratio = next(
                    (r[key] for key in r if key.startswith("speedup_vs_" if j == 0 else "mem_ratio_vs_")),
                    None,
                )
                texts.append(f"{ratio:.2f}×" if isinstance(ratio, (int, float)) else "")
            bars = ax.bar(xs, ys, width=width, label=impl)
            for b, t in zip(bars, texts):
                if t:
                    ax.annotate(
                        t,
                        (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center",
                        va="bottom",
                        fontsize=8,
                    )
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, fontsize=8, rotation=10)
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    kinds = sorted({r.get("peak_mem_kind") for r in recs if r.get("peak_mem_kind")})
    fig.suptitle(
        f"end to end: one training step — {data.get('environment', {}).get('device', '')}\n"
        f"(ratio to baseline on the bars; memory: {', '.join(kinds)})",
        fontsize=9,
    )
    fig.tight_layout()
    path = stem.with_name(f"{stem.name}-e2e.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_report(json_path: str | Path, *, plots: bool = True) -> list[Path]:
    """Write the markdown (and, unless ``plots=False``, the PNGs) for ``json_path``; return the paths."""
    json_path = Path(json_path)
    data = load_results(json_path)
    stem = json_path.with_suffix("")
    md = json_path.with_suffix(".md")
    files = [md]
    pngs: list[Path] = []
    if plots:
        pngs = kernel_plots(data, stem)
        e2e = e2e_plot(data, stem)
        if e2e is not None:
            pngs.append(e2e)
    text = markdown_report(data)
    if pngs:
        text += "\n## Plots\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in pngs) + "\n"
    md.write_text(text)
    return files + pngs


def latest(results_dir: Path = RESULTS_DIR) -> Path | None:
    files = sorted(results_dir.glob("*.json"), key=lambda p: p.stat().st_mtime)
    return files[-1] if files else None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.report", description="tables and plots from a results JSON"
    )
    p.add_argument("json", nargs="?", default=None, help="results file (default: newest in bench/results)")
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    path = Path(args.json) if args.json else latest()
    if path is None or not path.is_file():
        raise SystemExit(f"no results file {path or 'in ' + str(RESULTS_DIR)}; run `python -m bench` first")
    for f in make_report(path, plots=not args.no_plots):
        print(f)


if __name__ == "__main__":
    main()
