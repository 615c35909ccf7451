"""``fastft compare`` and ``fastft sweep`` argument parsing.

The main CLI registers both with one line, ``fastft.experiments.cli.add_parsers(subparsers)``, and
runs ``args.func(args)`` under :func:`fastft.cli_common.run_guarded`; ``python -m fastft.experiments compare|sweep ...`` works on its own.
Every ``fastft train`` flag is accepted and applied to every run (``--seed`` is the first seed).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from fastft.cli_common import Parser, add_config_flags, quiet, run_guarded

__all__ = ["add_parsers", "cmd_compare", "cmd_sweep", "main"]

_OWN = {
    "command",
    "func",
    "config_files",
    "vary",
    "seeds",
    "parallel",
    "baseline",
    "alpha",
    "metric",
    "exp_output_dir",
    "search",
    "trials",
    "direction",
    "pruner",
    "pruner_startup_trials",
    "pruner_warmup_steps",
    "sampler_seed",
    "storage",
    "study_name",
    "enqueue",
    "max_failures",
}


def _common(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "-c",
        "--config",
        dest="config_files",
        action="append",
        default=[],
        help="YAML/JSON base config" + (" (repeat: one arm per file)" if what == "compare" else ""),
    )
    p.add_argument(
        "--output-dir", dest="exp_output_dir", default=None, help=f"root folder (default: outputs/{what})"
    )


def add_parsers(sub) -> None:
    """Add ``compare`` and ``sweep`` to an ``add_subparsers()`` object."""
    c = sub.add_parser(
        "compare",
        help="A/B test of strategies/configs over seeds, with paired tests",
        description="Run every arm x seed as its own fastft train run and report mean ± std, 95% CI and "
        "paired t / Wilcoxon tests of each arm against the baseline. Any fastft train flag applies to all.",
        conflict_handler="resolve",
    )
    add_config_flags(c)
    _common(c, "compare")
    c.add_argument("--vary", action="append", default=[], metavar="FIELD=A,B", help="one arm per value")
    c.add_argument("--seeds", default="3", help="N seeds (from --seed, default 42) or a list 1,2,3")
    c.add_argument("--parallel", type=int, default=1, help="runs at once (one GPU each when present)")
    c.add_argument("--baseline", default=None, help="reference arm name (default: the first arm)")
    c.add_argument("--alpha", type=float, default=0.05, help="significance level")
    c.add_argument("--metric", default=None, help="primary metric (default: the runs' metric-for-best)")
    c.set_defaults(func=cmd_compare)

    s = sub.add_parser(
        "sweep",
        help="hyperparameter search with Optuna (TPE, pruning, resumable storage)",
        description="Search any TrainConfig field with Optuna's seeded TPE sampler; a pruner stops bad "
        "trials at their evaluations. Any fastft train flag applies to all trials.",
        conflict_handler="resolve",
    )
    add_config_flags(s)
    _common(s, "sweep")
    s.add_argument(
        "--search",
        action="append",
        default=[],
        metavar="FIELD=KIND:...",
        help="loguniform:LOW:HIGH | uniform:LOW:HIGH | int:LOW:HIGH | choice:A,B",
    )
    s.add_argument("--trials", type=int, default=20, help="total trials in the study (all processes)")
    s.add_argument("--metric", default=None, help="validation metric to optimise (default: the task's)")
    s.add_argument(
        "--direction", choices=("maximize", "minimize"), default=None, help="default: from --metric"
    )
    s.add_argument("--pruner", choices=("median", "none", "hyperband"), default="median")
    s.add_argument("--pruner-startup-trials", type=int, default=2, help="median: trials before pruning")
    s.add_argument("--pruner-warmup-steps", type=int, default=0, help="median: steps before pruning")
    s.add_argument("--sampler-seed", type=int, default=0, help="TPE sampler seed")
    s.add_argument("--storage", default=None, help="Optuna storage URL or journal:FILE (default: SQLite)")
    s.add_argument("--study-name", default="fastft-sweep", help="study name inside the storage")
    s.add_argument("--enqueue", action="append", default=[], metavar="F=V,...", help="trial to run first")
    s.add_argument(
        "--max-failures", type=int, default=3, help="stop after this many failed trials in a row (default: 3)"
    )
    s.set_defaults(func=cmd_sweep)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from fastft.train.errors import ConfigError

    values = {k: v for k, v in vars(args).items() if k not in _OWN}
    for k in ("output_dir", "resume"):
        values.pop(k, None)
    if getattr(args, "resume", None) is not None:
        raise ConfigError(f"fastft {args.command} resumes by itself: drop --resume and run it again")
    return values


def _seeds(text: str, first: int) -> list[int]:
    from fastft.train.errors import ConfigError

    try:
        if "," in text:
            seeds = [int(x) for x in text.split(",") if x.strip()]
        else:
            seeds = list(range(first, first + int(text)))
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: give a count (3) or a list (1,2,3)") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: needs at least one seed, no repeats")
    return seeds


def cmd_compare(args: argparse.Namespace) -> int:
    from fastft.experiments.compare import build_arms, run_compare
    from fastft.experiments.spec import parse_vary

    vary = parse_vary(args.vary)
    overrides = _overrides(args)
    first = int(overrides.pop("seed", 42))
    seeds = _seeds(args.seeds, first)
    arms = build_arms(args.config_files, vary, overrides)
    doc = run_compare(
        arms,
        seeds,
        args.exp_output_dir or "outputs/compare",
        parallel=args.parallel,
        baseline=args.baseline,
        alpha=args.alpha,
        metric=args.metric,
        command="fastft " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )
    statuses = {r["status"] for r in doc["runs"]}
    if "interrupted" in statuses:
        return 130
    return 1 if "failed" in statuses else 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from fastft.experiments.spec import parse_assignments, parse_search
    from fastft.experiments.sweep import run_sweep
    from fastft.train.config import config_from_dict, load_config_file
    from fastft.train.errors import ConfigError

    if len(args.config_files) > 1:
        raise ConfigError("fastft sweep takes one -c base config")
    space = parse_search(args.search)
    if not space:
        raise ConfigError(
            "fastft sweep needs at least one --search FIELD=KIND:... (e.g. lr=loguniform:1e-5:3e-4)"
        )
    base = load_config_file(args.config_files[0]) if args.config_files else {}
    base.update(_overrides(args))
    config_from_dict(base)  # unknown keys fail now
    out = run_sweep(
        base,
        space,
        args.exp_output_dir or "outputs/sweep",
        trials=args.trials,
        metric=args.metric,
        direction=args.direction,
        pruner=args.pruner,
        pruner_startup_trials=args.pruner_startup_trials,
        pruner_warmup_steps=args.pruner_warmup_steps,
        sampler_seed=args.sampler_seed,
        storage=args.storage,
        study_name=args.study_name,
        enqueue=[parse_assignments(e, "--enqueue") for e in args.enqueue],
        max_failures=args.max_failures,
    )
    if out["stopped"]:  # a signal or failing trials ended it early; the study stays resumable
        code, line = out["stopped"]
        print(f"fastft sweep: {line}", file=sys.stderr, flush=True)
        return code
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m fastft.experiments compare|sweep ...`` (same exit codes as ``fastft``)."""
    p = Parser(prog="fastft", description="fastft experiments")
    sub = p.add_subparsers(dest="command", metavar="{compare,sweep}", parser_class=Parser)
    add_parsers(sub)
    args = p.parse_args(argv)
    if args.command is None:
        p.print_help()
        return 2
    quiet()
    return run_guarded(args, args.func)
