"""Experiments over many runs: ``fastft compare`` (A/B tests of strategies over seeds) and
``fastft sweep`` (hyperparameter search on Optuna). ``fastft.experiments.cli.add_parsers`` registers
both subcommands on an argparse subparsers object."""

__all__ = ["compare", "sweep", "stats", "spec", "cli"]
