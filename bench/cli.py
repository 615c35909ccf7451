"""Command line of one benchmark part, ``python -m bench.bench_<part>``: run it, write its
results (JSON, markdown, plots) and print its table."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import report
from bench.common import measure_peaks, resolve_device
from bench.records import markdown_table, write_results

__all__ = ["main_for"]


def main_for(
    run: Callable[..., list[dict[str, Any]]],
    part: str,
    argv: list[str] | None = None,
    *,
    add_args: Callable[[argparse.ArgumentParser], None] | None = None,
    apply_args: Callable[[argparse.Namespace], None] | None = None,
) -> Path:
    """Command line of ``python -m bench.bench_<part>``: ``--quick``, ``--device``, ``--out``, ``--no-plots``.

    Runs ``run(device, quick)``, writes the JSON, the markdown and the plots, and prints the table.
    A part may add its own options (``add_args``) and act on them before the run (``apply_args``).
    """
    p = argparse.ArgumentParser(prog=f"python -m bench.bench_{part}", description=f"fastft benchmark: {part}")
    p.add_argument("--quick", action="store_true", help="small shapes / few repeats (smoke run)")
    p.add_argument("--device", default="auto", help="cuda, cuda:1, cpu (default: cuda if present)")
    p.add_argument("--out", default=None, help="output folder (default: bench/results)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    if add_args is not None:
        add_args(p)
    args = p.parse_args(argv)
    if apply_args is not None:
        apply_args(args)
    device = resolve_device(args.device)
    peaks = measure_peaks(device, quick=args.quick)
    records = run(device, quick=args.quick)
    path = write_results(part, records, device=device, out_dir=args.out, peaks=peaks)
    sys.stdout.write(markdown_table(records))
    files = report.make_report(path, plots=not args.no_plots)
    print(f"\nwrote {path}" + "".join(f"\n      {f}" for f in files))
    return path
