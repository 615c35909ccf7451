"""One compare run in its own process: ``python -m fastft.experiments.worker STATS.json train ...``.

Runs ``fastft train <args>`` exactly as the CLI does (the same parser, command and exit codes, from
:mod:`fastft.cli_common`) and then writes ``STATS.json`` with
what results.json does not hold: the process's peak memory (CPU resident set; CUDA allocator peak
when CUDA was used) and its wall time."""

from __future__ import annotations

import json
import os
import resource
import sys
import time


def _peak_memory() -> dict:
    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def _train(argv: list[str]) -> int:
    """``fastft train <argv[1:]>`` (``argv[0]`` is ``train``), as :func:`fastft.cli.main` runs it."""
    from fastft.cli_common import Parser, add_train_parser, cmd_train, quiet, run_guarded

    p = Parser(prog="fastft")
    add_train_parser(p.add_subparsers(dest="command", metavar="{train}", parser_class=Parser))
    args = p.parse_args(argv)
    if args.command is None:
        p.print_help()
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet()
    return run_guarded(args, cmd_train)


def main(argv: list[str]) -> int:
    stats_path, rest = argv[0], argv[1:]
    t0 = time.perf_counter()
    rc = 1
    try:
        rc = _train(rest)
    finally:
        stats = {"rc": rc, "wall_s": round(time.perf_counter() - t0, 2), **_peak_memory()}
        tmp = stats_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(stats, fh)
        os.replace(tmp, stats_path)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
