"""What ``fastft`` (:mod:`fastft.cli`) and ``fastft compare|sweep`` (:mod:`fastft.experiments.cli`)
share: the one-line argparse :class:`Parser`, the ``fastft train`` flags generated from
:class:`fastft.train.TrainConfig`, the ``train`` command itself, :func:`quiet` and the error contract
:func:`run_guarded` (bad input: one line on stderr, exit 2).

Both CLIs import this module; neither imports the other's parser internals.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from collections.abc import Callable
from typing import Any

__all__ = [
    "Parser",
    "add_config_flags",
    "add_train_parser",
    "cmd_train",
    "flag_names",
    "quiet",
    "run_guarded",
    "user_errors",
]


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in ONE line (exit code 2), not usage + error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _none_or(typ):
    def conv(s: str):
        if s.lower() in ("none", "null", ""):
            return None
        return typ(s)

    conv.__name__ = typ.__name__
    return conv


def flag_names(field: str) -> list[str]:
    """``--field-name`` and its Hugging Face aliases (:data:`fastft.train.config.ALIASES`)."""
    from fastft.train.config import ALIASES

    return ["--" + n.replace("_", "-") for n in (field, *ALIASES.get(field, ()))]


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per :class:`TrainConfig` field (type, choices and help from the field's metadata);
    an unset flag leaves no attribute (``argparse.SUPPRESS``), so config files and defaults show."""
    from fastft.train.config import TrainConfig

    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        names = flag_names(f.name)
        typ = str(f.type)
        default = getattr(defaults, f.name)
        shown = "offline default" if (f.name == "model" and default is None) else default
        help_ = f.metadata.get("help", "") + f" [default: {shown}]"
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_}
        choices = f.metadata.get("choices")
        if choices == "tasks":  # the task registry's names
            from fastft.train.tasks import task_names

            choices = task_names()
        if typ.startswith("bool"):
            p.add_argument(*names, action=argparse.BooleanOptionalAction, **kw)
            continue
        if typ.startswith("list[float]"):
            p.add_argument(*names, type=float, nargs=3, metavar=("TRAIN", "VAL", "TEST"), **kw)
            continue
        if typ.startswith("list[str]"):
            p.add_argument(*names, type=str, nargs="+", metavar="NAME", **kw)
            continue
        if choices is not None:
            kw["metavar"] = "{" + ",".join("none" if c is None else str(c) for c in choices) + "}"
        p.add_argument(*names, type=field_type(typ), **kw)


def field_type(typ: str) -> Callable[[str], Any]:
    """The argparse ``type=`` of a scalar config field from its annotation (``int | None`` etc.)."""
    base = int if typ.startswith("int") else float if typ.startswith("float") else str
    return _none_or(base) if "None" in typ else base


def add_train_parser(sub) -> argparse.ArgumentParser:
    """Add ``train`` (``-c`` plus every config flag) to an ``add_subparsers()`` object."""
    t = sub.add_parser(
        "train",
        help="fine-tune a model (no arguments: all-MiniLM-L6-v2 on Rotten Tomatoes, offline)",
        description="Fine-tune a BERT- or GPT-family model. With no arguments: the offline default run "
        "(all-MiniLM-L6-v2 on the Rotten Tomatoes review snippets, ~4 minutes on a 2-core CPU).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    t.add_argument(
        "-c",
        "--config",
        dest="config_file",
        default=None,
        help="YAML or JSON file with config keys (flags override it)",
    )
    add_config_flags(t)
    return t


def cmd_train(args: argparse.Namespace) -> int:
    """``fastft train``: defaults < ``-c`` file < flags; 130 / 143 when a signal stopped the run."""
    from fastft.train.config import config_from_dict, load_config_file
    from fastft.train.trainer import Trainer

    values = dict(vars(args))
    values.pop("command", None)
    config_file = values.pop("config_file", None)
    cfg = config_from_dict(load_config_file(config_file)) if config_file else None
    cfg = config_from_dict(values, cfg)
    result = Trainer(cfg).train()
    if result.get("interrupted"):
        return 130 if result["interrupted"] == "SIGINT" else 143
    return 0


def quiet() -> None:
    """Library chatter (progress bars, load reports) would bury the one line a user needs."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except Exception:  # noqa: BLE001
        pass
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001
        pass


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean bad input: one line and exit code 2."""
    from fastft.train.errors import ConfigError, DataError

    return (ConfigError, DataError)


def run_guarded(args: argparse.Namespace, fn: Callable[[argparse.Namespace], int]) -> int:
    """``fn(args)`` under the CLI's error contract: bad input prints one line and exits 2 (a
    :class:`PeerError` prints nothing: rank 0 prints it for every rank), a failed training prints one
    line and exits 1, an interrupt exits 128 + the signal (Ctrl-C 130, a second SIGTERM 143)."""
    from fastft.train.errors import PeerError, TrainingError, first_line

    try:
        return fn(args)
    except user_errors() as e:
        if not isinstance(e, PeerError):
            print(f"fastft {args.command}: error: {first_line(e, 10_000)}", file=sys.stderr, flush=True)
        return 2
    except TrainingError as e:
        print(f"fastft {args.command}: failed: {first_line(e, 10_000)}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt as e:  # a second SIGTERM (trainer.StopNow) carries its signum
        print(f"fastft {args.command}: interrupted", file=sys.stderr, flush=True)
        return 128 + int(getattr(e, "signum", signal.SIGINT))
