"""Markdown tables and PNG plots from a raw results file.

    python -m bench.report                       # newest bench/results/*.json
    python -m bench.report bench/results/cpu-2026-11-22.json
    python -m bench.report --readme              # also refresh the results block of bench/README.md

Writes beside the JSON: ``<stem>.md`` (every part's table, ratios against each baseline, targets),
``<stem>-<part>-<name>.png`` (median time with p20–p80 bars against sequence length / tokens for
each kernel, one line per implementation) and ``<stem>-e2e.png`` (end-to-end bar chart:
samples/s and peak memory per scenario and implementation, ratio to the baseline on the bars).

The x axis of a kernel plot is the first of the record fields ``x``, ``seq_len``, ``tokens``,
``numel`` or, in a dict ``shape``, the first of ``S``, ``T``, ``tokens``, ``seq_len``, ``seq``, ``M``,
``N``, ``numel``, ``params`` -- bench parts choose it by what they put there. Rows whose names differ
only by that value (``bert-S128-fwd``, ``bert-S512-fwd``) share a plot. Rows without one are only tabled.
"""

from __future__ import annotations

import argparse
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR
from bench.records import load_results, markdown_report, markdown_table

X_FIELDS = ("x", "seq_len", "tokens", "numel")
X_SHAPE_KEYS = ("S", "T", "tokens", "seq_len", "seq", "M", "N", "numel", "params")


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


def _series_name(rec: dict[str, Any]) -> str:
    """The row's name with its x value taken out: ``bert-S128-fwd`` -> ``bert-S*-fwd``."""
    x = x_of(rec)
    name = str(rec.get("name", ""))
    if x is None or not float(x[1]).is_integer():
        return name
    return re.sub(rf"(?<![0-9]){int(x[1])}(?![0-9])", "*", name)


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
                by_name[_series_name(r)].append(r)
        for name, recs in by_name.items():
            xkey = x_of(recs[0])[0]
            # one line per (impl, other shape entries, dtype)
            lines: dict[str, list[dict]] = defaultdict(list)
            for r in recs:
                lines[f"{r['impl']} {_series_key(r, xkey)}".strip()].append(r)
            if not any(len(v) > 1 for v in lines.values()):
                continue  # a single point per line: shown in the part's speedup chart instead
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
            fig.savefig(path, dpi=110, bbox_inches="tight")
            plt.close(fig)
            out.append(path)
        sp = speedup_plot(part, body.get("records", []), stem, device)
        if sp is not None:
            out.append(sp)
    return out


def speedup_plot(part: str, records: list[dict], stem: Path, device: str, limit: int = 48) -> Path | None:
    """Horizontal bars of every ``speedup_vs_<b>`` of the part's fastft rows (log scale, 1 = parity)."""
    bars = []
    for r in records:
        if r.get("status", "ok") != "ok" or not str(r.get("impl", "")).startswith("fastft"):
            continue
        for k, v in r.items():
            if k.startswith("speedup_vs_") and isinstance(v, (int, float)) and v > 0:
                bars.append(
                    (f"{r['name']} [{r.get('shape_str', '')}] {r['impl']} vs {k[len('speedup_vs_') :]}", v)
                )
    if not bars:
        return None
    bars = bars[:limit]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 1.4 + 0.22 * len(bars)))
    ys = range(len(bars))
    ax.barh(list(ys), [v for _, v in bars], color=["tab:green" if v >= 1 else "tab:red" for _, v in bars])
    ax.set_yticks(list(ys))
    ax.set_yticklabels([label for label, _ in bars], fontsize=6)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_xlabel("speedup (baseline time / this time; >1 is faster)")
    ax.set_title(f"{part}: speedups\n{device}", fontsize=9)
    ax.grid(True, axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    path = stem.with_name(f"{stem.name}-{_slug(part)}-speedup.png")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _baseline_of(group: list[dict]) -> dict | None:
    """The row the others are compared to (named in their ``speedup_vs_<impl>`` keys)."""
    names = {k[len("speedup_vs_") :] for r in group for k in r if k.startswith("speedup_vs_")}
    return next((r for r in group if r["impl"] in names), None)


def e2e_plot(data: dict[str, Any], stem: Path) -> Path | None:
    """Bar chart per scenario: throughput and peak memory relative to that scenario's baseline
    (baseline = 1), with the absolute values written on the bars."""
    body = data.get("parts", {}).get("e2e")
    if not body:
        return None
    recs = [r for r in body.get("records", []) if r.get("status", "ok") == "ok" and r.get("samples_per_s")]
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in recs:
        shape = r.get("shape")
        extra = f"\n({shape.get('lengths')})" if isinstance(shape, dict) and shape.get("lengths") else ""
        groups[f"{r['name']}{extra}"].append(r)
    groups = {g: rs for g, rs in groups.items() if _baseline_of(rs) is not None}
    if not groups:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("samples_per_s", "throughput vs baseline (samples/s)", "{:.3g}/s")]
    if any(r.get("peak_mem_bytes") for rs in groups.values() for r in rs):
        panels.append(("peak_mem_bytes", "peak memory vs baseline", "{:.0f} MiB"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.8), squeeze=False)
    names = list(groups)
    width = 0.38
    for ax, (field, title, fmt) in zip(axes[0], panels):
        for k, g in enumerate(names):
            base = _baseline_of(groups[g])
            ordered = [base] + [r for r in groups[g] if r is not base]
            for i, r in enumerate(ordered):
                v, bv = r.get(field), base.get(field)
                if not v or not bv:
                    continue
                x = k + (i - (len(ordered) - 1) / 2) * width
                color = "tab:gray" if r is base else "tab:green"
                bar = ax.bar(
                    [x],
                    [v / bv],
                    width=width * 0.95,
                    color=color,
                    label="baseline (HF)" if r is base else "fastft",
                )
                shown = v / 2**20 if field == "peak_mem_bytes" else v
                ax.annotate(
                    f"{r['impl']}\n" + fmt.format(shown),
                    (x, bar[0].get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
        ax.axhline(1.0, color="black", lw=0.6)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
        ax.margins(y=0.2)
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        ax.legend(uniq.values(), uniq.keys(), fontsize=8)
    kinds = sorted({r.get("peak_mem_kind") for r in recs if r.get("peak_mem_kind")})
    fig.suptitle(
        f"end to end, one training step: {data.get('environment', {}).get('device', '')}\n"
        f"memory: {'; '.join(kinds)}",
        fontsize=8,
    )
    fig.tight_layout()
    path = stem.with_name(f"{stem.name}-e2e.png")
    fig.savefig(path, dpi=110, bbox_inches="tight")
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


README = Path(__file__).resolve().parent / "README.md"
_START, _END = "<!-- results:start -->", "<!-- results:end -->"


def readme_section(json_path: Path, readme: Path = README) -> str:
    """The "latest results" block for bench/README.md: the end-to-end table (targets beside it),
    links to the full tables and the plots of ``json_path`` (paths relative to the README)."""

    data = load_results(json_path)
    env = data.get("environment", {})
    rel = lambda p: os.path.relpath(p, readme.parent)
    lines = [
        f"Latest run: **{env.get('device')}**, {env.get('date')}, commit `{(env.get('git_commit') or '?')[:10]}`, "
        f"torch {env.get('torch')}, triton {env.get('triton')}, transformers {env.get('transformers')}. "
        f"Full tables: [{json_path.with_suffix('.md').name}]({rel(json_path.with_suffix('.md'))}); "
        f"raw: [{json_path.name}]({rel(json_path)}).",
        "",
    ]
    e2e = data.get("parts", {}).get("e2e", {}).get("records", [])
    if e2e:
        lines += ["End to end:", "", markdown_table(e2e)]
        lines += baseline_lines(e2e)
        for r in e2e:  # whole runs are sequential: show the load-insensitive CPU-time view beside wall time
            if r.get("cpu_time_ratio_vs_hf_trainer") is not None:
                lines += [
                    f"{r['name']}: wall time per step {r.get('speedup_vs_hf_trainer') or 0:.2f}× vs hf_trainer, "
                    f"process CPU time per step {r['cpu_time_ratio_vs_hf_trainer']:.2f}× (1-min load average "
                    f"{r.get('loadavg_1m')}), accuracy {r.get('accuracy')} (tolerance "
                    f"{r.get('accuracy_tolerance') or 0:.3f}).",
                    "",
                ]
    stem = json_path.with_suffix("")
    pngs = sorted(stem.parent.glob(f"{stem.name}-*.png"))
    e2e_png = [p for p in pngs if p.name.endswith("-e2e.png")]
    lines += [f"![{p.stem}]({rel(p)})" for p in e2e_png]
    others = [p for p in pngs if p not in e2e_png]
    if others:
        lines += ["", "Kernel plots: " + ", ".join(f"[{p.stem.split('-', 4)[-1]}]({rel(p)})" for p in others)]
    return "\n".join(lines) + "\n"


def baseline_lines(records: list[dict]) -> list[str]:
    """One line per end-to-end scenario naming the exact baseline configuration that ran."""
    out = []
    for r in records:
        if (
            r.get("status", "ok") == "ok"
            and r.get("config")
            and not str(r.get("impl", "")).startswith("fastft")
        ):
            out.append(f"- {r['name']} baseline `{r['impl']}`: {r['config']}")
    return out + [""] if out else []


def newest_for_readme(results_dir: Path = RESULTS_DIR) -> Path | None:
    """The newest ``python -m bench`` results file with end-to-end records: a GPU one if any (the README
    shows GPU numbers once they exist), else CPU. Other JSON there (bench_quality, compare) is skipped."""
    runs = []
    for p in results_dir.glob("*.json"):
        try:
            data = load_results(p)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(data, dict) and (data.get("parts") or {}).get("e2e", {}).get("records"):
            runs.append((str((data.get("environment") or {}).get("date") or ""), p))
    runs.sort()
    gpu = [p for _, p in runs if not p.name.startswith("cpu-")]
    return (gpu or [p for _, p in runs] or [None])[-1]


def update_readme(json_path: Path | None = None, readme: Path = README) -> Path:
    """Replace the block between the results markers of bench/README.md."""
    json_path = Path(json_path) if json_path else newest_for_readme()
    if json_path is None:
        raise SystemExit("no results in bench/results; run `python -m bench` first")
    text = readme.read_text()
    if _START not in text or _END not in text:
        raise SystemExit(f"{readme}: no {_START} ... {_END} markers to fill")
    head, rest = text.split(_START, 1)
    _, tail = rest.split(_END, 1)
    readme.write_text(head + _START + "\n" + readme_section(json_path, readme) + _END + tail)
    return readme


def latest(results_dir: Path = RESULTS_DIR) -> Path | None:
    files = sorted(results_dir.glob("*.json"), key=lambda p: p.stat().st_mtime)
    return files[-1] if files else None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.report", description="tables and plots from a results JSON"
    )
    p.add_argument("json", nargs="?", default=None, help="results file (default: newest in bench/results)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument(
        "--readme",
        action="store_true",
        help="also put this run's end-to-end table and plots into bench/README.md "
        "(default file: the newest GPU run, else the newest CPU run)",
    )
    args = p.parse_args(argv)
    if args.readme and not args.json:
        args.json = str(newest_for_readme() or "")
    path = Path(args.json) if args.json else latest()
    if path is None or not path.is_file():
        raise SystemExit(f"no results file {path or 'in ' + str(RESULTS_DIR)}; run `python -m bench` first")
    for f in make_report(path, plots=not args.no_plots):
        print(f)
    if args.readme:
        print(update_readme(path))


if __name__ == "__main__":
    main()
