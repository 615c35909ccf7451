"""``python -m bench``: run every benchmark part that fits the device, then write the report.

    python -m bench                      # all parts, full sizes
    python -m bench --quick              # small shapes, few repeats (minutes on a CPU)
    python -m bench --parts adamw,e2e    # some parts only
    python -m bench --device cpu --out /tmp/bench --no-plots

Parts are the ``bench/bench_<part>.py`` files present (a part whose file is missing is skipped with
a message; one that fails to import or to run is recorded as "not available" with the reason).
All parts run in this one process, each with its baselines, after one measurement of the device
peaks. Output: ``<out>/<device>-<date>.json`` (raw), ``.md`` (tables) and ``-*.png`` (plots).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import sys
import time
import traceback
from pathlib import Path

import torch

from bench import common
from bench.records import not_available, write_results

#: Known parts in run order; any other bench_<name>.py found is run after these.
PARTS = ("adamw", "losses", "attention", "lora", "e2e")


def discover() -> list[str]:
    here = Path(__file__).resolve().parent
    found = sorted(p.stem[len("bench_") :] for p in here.glob("bench_*.py"))
    return [p for p in PARTS if p in found] + [p for p in found if p not in PARTS]


def run_part(part: str, device: torch.device, quick: bool) -> list[dict]:
    """``bench.bench_<part>.run(device, quick)``; failures become one "not available" row."""
    try:
        mod = importlib.import_module(part if "." in part else f"bench.bench_{part}")
    except Exception as e:
        return [not_available(part, part, "-", f"import failed: {type(e).__name__}: {e}"[:300])]
    if not hasattr(mod, "run"):
        return [not_available(part, part, "-", f"bench/bench_{part}.py has no run(device, quick)")]
    try:
        records = mod.run(device, quick=quick)
    except Exception as e:
        logging.getLogger("fastft.bench").debug("%s", traceback.format_exc())
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return [not_available(part, part, "-", f"run failed: {type(e).__name__}: {msg}"[:300])]
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return list(records or [])


def main(argv: list[str] | None = None) -> Path | None:
    available = discover()
    p = argparse.ArgumentParser(prog="python -m bench", description="fastft benchmark suite")
    p.add_argument("--quick", action="store_true", help="small shapes and few repeats (smoke run)")
    p.add_argument(
        "--parts",
        default=None,
        help=f"comma-separated parts (default: all present: {','.join(available)}); "
        "a dotted module name (pkg.mod) runs that module's run(device, quick)",
    )
    p.add_argument("--device", default="auto", help="cuda, cuda:N or cpu (default: cuda when present)")
    p.add_argument("--out", default=None, help="output folder (default: bench/results)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--list", action="store_true", help="list the parts present and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="log tracebacks of failed parts")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(name)s: %(message)s"
    )
    if args.list:
        print("\n".join(available))
        return None
    parts = [s.strip() for s in args.parts.split(",") if s.strip()] if args.parts else available
    # a dotted name is a module outside bench/ with the same run(device, quick) (e.g. a test's part)
    unknown = [s for s in parts if s not in available and "." not in s]
    if unknown:
        p.error(f"unknown part(s) {', '.join(unknown)}; present: {', '.join(available)}")
    device = common.resolve_device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here; use --device cpu")
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        print("note: TRITON_INTERPRET=1 is set; CPU timings of forced-triton paths measure the interpreter")
    t_all = time.perf_counter()
    peaks = common.measure_peaks(device, quick=args.quick)
    print(
        f"{common.device_name(device)}: matmul {peaks['matmul_tflops']:.3g} TFLOP/s ({peaks['matmul_dtype']}), "
        f"copy {peaks['copy_gbps']:.3g} GB/s, in-place update {peaks['rmw_gbps']:.3g} GB/s"
    )
    path = None
    for part in parts:
        t0 = time.perf_counter()
        print(f"== {part} ...", flush=True)
        records = run_part(part, device, args.quick)
        name = part
        if "." in part:  # an outside module: file its rows under the part they name
            name = records[0].get("part", part.rsplit(".", 1)[-1]) if records else part.rsplit(".", 1)[-1]
        path = write_results(name, records, device=device, out_dir=args.out, peaks=peaks)
        bad = sum(r.get("status") != "ok" for r in records)
        print(f"   {len(records)} rows ({bad} not available) in {time.perf_counter() - t0:.0f}s", flush=True)
    if path is not None:
        from bench import report

        files = report.make_report(path, plots=not args.no_plots)
        print(f"done in {time.perf_counter() - t_all:.0f}s: {path}")
        for f in files:
            print(f"  {f}")
    return path


if __name__ == "__main__":
    main()
    sys.exit(0)
