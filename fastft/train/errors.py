"""The trainer's user-facing errors and the one helper that turns any exception into one line.

``ConfigError`` (re-exported by :mod:`fastft.train.config`) and ``DataError`` (re-exported by
:mod:`fastft.train.data`) both mean bad input: the CLI prints their one line and exits with 2.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DataError", "PeerError", "TrainingError", "first_line"]


class ConfigError(ValueError):
    """A user error in the run description: one line naming the problem and the fix (exit code 2)."""


class DataError(ValueError):
    """A user-facing data problem: one line naming the problem and the fix (CLI exit code 2)."""


class PeerError(ConfigError):
    """Rank 0's user error, raised on the other torchrun ranks too so that they stop at once instead of
    waiting at the next collective until its timeout; the CLI prints it on rank 0 only (exit code 2)."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss stays NaN); one line for the user, exit code 1."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of ``str(exc)`` (at most ``limit`` characters), else the type's name."""
    s = str(exc).strip()
    return s.splitlines()[0][:limit] if s else type(exc).__name__
