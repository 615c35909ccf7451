"""Benchmark records and result files: one dict per measured row, merged per part into a JSON
file (plus its markdown table) under ``bench/results``.

Rows come from :func:`make_record` (or :func:`not_available` for a part that could not run);
:func:`add_ratios` adds the speed and memory ratios against the baselines; :func:`write_results`
merges a part into ``<out>/<device>-<date>.json`` and rewrites the sibling ``.md``
(:func:`markdown_report`).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from bench.common import (
    RESULTS_DIR,
    cached_peaks,
    device_slug,
    environment,
    measure_peaks,
    peak_mem_kind,
    resolve_device,
)

__all__ = [
    "make_record",
    "add_ratios",
    "not_available",
    "results_path",
    "write_results",
    "load_results",
    "markdown_table",
    "markdown_report",
]


# --------------------------------------------------------------------------------------------
# records
# --------------------------------------------------------------------------------------------


def _shape_str(shape: Any) -> str:
    if isinstance(shape, dict):
        return ",".join(f"{k}={v}" for k, v in shape.items())
    if isinstance(shape, (tuple, list, torch.Size)):
        return "x".join(str(s) for s in shape)
    return str(shape)


def make_record(
    part: str,
    name: str,
    impl: str,
    shape: Any,
    dtype: torch.dtype | str | None,
    stats: dict[str, float] | None,
    peak_mem_bytes: int | None = None,
    *,
    flops: float | None = None,
    nbytes: float | None = None,
    device: torch.device | str | None = None,
    peaks: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One result row. ``flops``/``nbytes`` (per call) give TFLOP/s / GB/s and the % of the device
    peak measured by :func:`measure_peaks` (pass ``peaks`` or ``device``; peaks are measured once).

    ``shape`` may be a dict (``{"B": 8, "S": 512}``, kept as is and also flattened into
    ``shape_str``) or a tuple. Extra keyword fields are stored unchanged (e.g. ``seq_len`` for plots,
    ``target`` text, ``status``).
    """
    rec: dict[str, Any] = {
        "part": part,
        "name": name,
        "impl": impl,
        "shape": shape if isinstance(shape, (dict, str, int)) else list(shape),
        "shape_str": _shape_str(shape),
        "dtype": str(dtype).replace("torch.", "") if dtype is not None else None,
        "median_ms": None,
        "p20_ms": None,
        "p80_ms": None,
        "n": None,
        "peak_mem_bytes": peak_mem_bytes,
        "peak_mem_kind": peak_mem_kind(device) if device is not None else None,
        "status": "ok",
    }
    if stats:
        rec.update({k: stats[k] for k in ("median_ms", "p20_ms", "p80_ms", "n") if k in stats})
    if peaks is None and device is not None and (flops or nbytes) and stats:
        peaks = measure_peaks(device)
    med = rec["median_ms"]
    if flops and med:
        rec["flops"] = flops
        rec["tflops"] = flops / (med * 1e-3) / 1e12
        if peaks:
            rec["pct_peak_flops"] = 100 * rec["tflops"] / peaks["matmul_tflops"]
    if nbytes and med:
        rec["bytes"] = nbytes
        rec["gbps"] = nbytes / (med * 1e-3) / 1e9
        if peaks:
            rec["pct_peak_bw"] = 100 * rec["gbps"] / peaks.get("bw_gbps", peaks["copy_gbps"])
    rec.update(extra)
    return rec


def not_available(
    part: str, name: str, impl: str, reason: str, shape: Any = "", **extra: Any
) -> dict[str, Any]:
    """A row saying that ``impl`` could not be measured (missing part, unsupported device...)."""
    rec = make_record(part, name, impl, shape, None, None, None, **extra)
    rec["status"] = "not available"
    rec["reason"] = reason
    return rec


def add_ratios(
    records: list[dict[str, Any]],
    baselines: Iterable[str],
    *,
    key: Sequence[str] = ("name", "shape_str", "dtype"),
    time_field: str = "median_ms",
) -> list[dict[str, Any]]:
    """For every row, add ``speedup_vs_<b>`` (= baseline time / this time, >1 is faster) and
    ``mem_ratio_vs_<b>`` (= this peak / baseline peak, <1 is leaner) against each baseline impl
    ``b`` measured for the same ``key``. Baseline rows themselves get no ratio to themselves.
    Returns ``records`` (modified in place)."""
    baselines = list(baselines)
    groups: dict[tuple, dict[str, dict]] = {}
    for r in records:
        groups.setdefault(tuple(r.get(k) for k in key), {})[r["impl"]] = r
    for r in records:
        g = groups[tuple(r.get(k) for k in key)]
        for b in baselines:
            base = g.get(b)
            if base is None or base is r:
                continue
            t, tb = r.get(time_field), base.get(time_field)
            r[f"speedup_vs_{b}"] = tb / t if t and tb else None
            m, mb = r.get("peak_mem_bytes"), base.get("peak_mem_bytes")
            r[f"mem_ratio_vs_{b}"] = m / mb if m is not None and mb else None
    return records


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------


def results_path(device: torch.device | str | None = None, out_dir: str | os.PathLike | None = None) -> Path:
    """``<out_dir>/<device>-<UTC date>.json`` (out_dir: ``$FASTFT_BENCH_OUT`` or bench/results)."""
    out = Path(out_dir or os.environ.get("FASTFT_BENCH_OUT") or RESULTS_DIR)
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    return out / f"{device_slug(resolve_device(device))}-{date}.json"


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.dtype):
        return str(x).replace("torch.", "")
    if isinstance(x, torch.device):
        return str(x)
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if hasattr(x, "item"):
        return _jsonable(x.item())
    return str(x)


def write_results(
    part: str,
    records: list[dict[str, Any]],
    *,
    device: torch.device | str | None = None,
    out_dir: str | os.PathLike | None = None,
    peaks: dict[str, Any] | None = None,
    markdown: bool = True,
) -> Path:
    """Merge ``records`` of ``part`` into ``<out_dir>/<device>-<date>.json`` and return its path.

    The file holds ``{"environment", "peaks", "parts": {part: {"environment", "peaks",
    "records"}}}``; writing a part replaces only that part (each keeps the environment it ran in).
    Written atomically; never edit it by hand. Also rewrites the sibling ``.md`` table.
    """
    device = resolve_device(device)
    path = results_path(device, out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"parts": {}}
    if path.exists():
        try:
            data = load_results(path)
            data.setdefault("parts", {})
        except (OSError, ValueError):
            data = {"parts": {}}
    env = environment(device)
    if peaks is None:
        peaks = cached_peaks()
    data["environment"] = env
    if peaks:
        data["peaks"] = peaks
    # every row carries the facts needed to read it alone (the part's environment has the rest)
    stamp = {k: env.get(k) for k in ("device", "torch", "triton", "transformers", "git_commit", "date")}
    records = [{**r, "env": {**stamp, **r.get("env", {})}} for r in records]
    data["parts"][part] = {"environment": env, "peaks": peaks, "records": records}
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w") as f:
        json.dump(_jsonable(data), f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    if markdown:
        path.with_suffix(".md").write_text(markdown_report(load_results(path)))
    return path


def _fmt(x: Any, spec: str = ".3g") -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return format(x, spec)
    return str(x)


def _mib(b: Any) -> str:
    return "–" if b is None else f"{b / 2**20:.3g}"


def _ratios_text(r: dict[str, Any], prefix: str) -> str:
    out = []
    for k, v in r.items():
        if k.startswith(prefix) and isinstance(v, (int, float)):
            out.append(f"{v:.2f}× vs {k[len(prefix) :]}")
    return "; ".join(out)


def markdown_table(records: list[dict[str, Any]]) -> str:
    """A markdown table of result rows: time, peak memory, throughput, and the speedup
    (baseline time / this time) and memory ratio (this peak / baseline peak) against every
    baseline the row has ratios for (``speedup_vs_<b>``, ``mem_ratio_vs_<b>`` from :func:`add_ratios`)."""
    if not records:
        return "_no results_\n"
    ok = [r for r in records if r.get("status", "ok") == "ok"]
    has_rate = any(r.get("samples_per_s") is not None for r in ok)
    has_tp = any(r.get("samples_per_s") is None and (r.get("tflops") or r.get("gbps")) for r in ok)
    has_ratio = any(k.startswith(("speedup_vs_", "mem_ratio_vs_")) for r in ok for k in r)
    has_target = any(r.get("target") for r in records)
    has_acc = any(r.get("accuracy") is not None for r in ok)
    head = ["name", "shape", "dtype", "impl", "median ms", "p20–p80 ms", "peak MiB"]
    if has_rate:
        head += ["samples/s", "tokens/s", "MFU %"]
    if has_acc:
        head += ["accuracy"]
    if has_tp:
        head += ["TFLOP/s or GB/s", "% of peak"]
    if has_ratio:
        head += ["speedup", "memory"]
    if has_target:
        head += ["target", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        row = [
            str(r.get("name", "")),
            str(r.get("shape_str", "")),
            _fmt(r.get("dtype")),
            str(r.get("impl", "")),
        ]
        if r.get("status", "ok") != "ok":
            row += [f"**{r.get('status')}**: {r.get('reason', '')}".replace("|", "/").replace("\n", " ")]
            row += [""] * (len(head) - len(row))
            lines.append("| " + " | ".join(row) + " |")
            continue
        row += [
            _fmt(r.get("median_ms"), ".4g"),
            "–"
            if r.get("p20_ms") is None
            else f"{_fmt(r.get('p20_ms'), '.4g')}–{_fmt(r.get('p80_ms'), '.4g')}",
            _mib(r.get("peak_mem_bytes")),
        ]
        if has_rate:
            mfu = r.get("mfu")
            row += [
                _fmt(r.get("samples_per_s"), ".4g"),
                _fmt(r.get("tokens_per_s"), ".4g"),
                _fmt(100 * mfu, ".2f") if mfu is not None else "–",
            ]
        if has_acc:
            row += [_fmt(r.get("accuracy"), ".4f")]
        if has_tp:
            if r.get("tflops") is not None:
                row += [f"{r['tflops']:.3g} TFLOP/s", _fmt(r.get("pct_peak_flops"), ".1f")]
            elif r.get("gbps") is not None:
                row += [f"{r['gbps']:.3g} GB/s", _fmt(r.get("pct_peak_bw"), ".1f")]
            else:
                row += ["–", "–"]
        if has_ratio:
            row += [_ratios_text(r, "speedup_vs_"), _ratios_text(r, "mem_ratio_vs_")]
        if has_target:
            met = r.get("target_met")
            judged = any(k.startswith("speedup_vs_") for k in r)  # targets apply to the rows with ratios
            target = str(r.get("target") or "") if judged else ""
            row += [target, "" if met is None else ("yes" if met else "**no**")]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def markdown_report(data: dict[str, Any]) -> str:
    """The whole results file as markdown: environment, measured peaks, one table per part."""
    env = data.get("environment", {})
    peaks = data.get("peaks") or {}
    out = [f"# fastft benchmark results: {env.get('device', '?')}", ""]
    out.append(
        f"torch {env.get('torch')}, triton {env.get('triton')}, transformers {env.get('transformers')}, "
        f"peft {env.get('peft')}, commit `{(env.get('git_commit') or '?')[:10]}`"
        f"{' (dirty)' if env.get('git_dirty') else ''}, {env.get('date')}. "
        "Generated from the raw JSON beside this file; do not edit."
    )
    if peaks:
        out.append(
            f"\nMeasured device peaks: matmul {peaks['matmul_tflops']:.3g} TFLOP/s "
            f"({peaks['matmul_dtype']}, n={peaks['matmul_n']}), copy {peaks['copy_gbps']:.3g} GB/s"
            + (f", in-place update {peaks['rmw_gbps']:.3g} GB/s" if "rmw_gbps" in peaks else "")
            + ".",
        )
    out.append(
        "\nTimes are per call (median, p20–p80 over the timed calls). speedup `x× vs b` = b's time / this "
        "time (>1: faster; end to end: mean step time); memory `x× vs b` = this peak / b's peak (<1: leaner). "
        "What each number means: bench/README.md."
    )
    for part, body in data.get("parts", {}).items():
        recs = body.get("records", [])
        penv = body.get("environment", {})
        out += ["", f"## {part}", ""]
        if (
            penv.get("git_commit") != env.get("git_commit")
            or penv.get("date", "")[:10] != env.get("date", "")[:10]
        ):
            out.append(f"_(run at commit `{(penv.get('git_commit') or '?')[:10]}`, {penv.get('date')})_\n")
        kinds = sorted({r.get("peak_mem_kind") for r in recs if r.get("peak_mem_kind")})
        if kinds:
            out.append(f"peak memory: {', '.join(kinds)}\n")
        notes = [r["note"] for r in recs if r.get("note")]
        for n in dict.fromkeys(notes):
            out.append(f"- {n}")
        bases = [
            f"{r['name']} baseline `{r['impl']}`: {r['config']}"
            for r in recs
            if r.get("status", "ok") == "ok"
            and r.get("config")
            and not str(r.get("impl", "")).startswith("fastft")
        ]
        for b in dict.fromkeys(bases):
            out.append(f"- {b}")
        if notes or bases:
            out.append("")
        out.append(markdown_table(recs))
    return "\n".join(out) + "\n"
