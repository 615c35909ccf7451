"""Field helpers shared by the config sections: the ``help``-carrying field and the common checks.

Every check raises :class:`~fastft.train.errors.ConfigError` with one line naming the ``--flag``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import field
from typing import Any

from fastft.train.errors import ConfigError

__all__ = ["_f", "flag", "check_positive", "check_non_negative", "check_choices"]


def _f(default: Any, help: str, **meta: Any) -> Any:
    """A field whose ``help`` becomes the ``--flag``'s help text."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


def flag(name: str) -> str:
    """``"max_length"`` -> ``"--max-length"``."""
    return "--" + name.replace("_", "-")


def check_positive(cfg: Any, names: tuple[str, ...]) -> None:
    """Each of ``names`` is a finite number > 0."""
    for name in names:
        v = getattr(cfg, name)
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ConfigError(f"{flag(name)} must be > 0 (got {v!r}); pass a positive value")


def check_non_negative(cfg: Any, names: tuple[str, ...]) -> None:
    """Each of ``names`` is >= 0."""
    for name in names:
        v = getattr(cfg, name)
        if v < 0:
            raise ConfigError(f"{flag(name)} must be >= 0 (got {v})")


def check_choices(cfg: Any, section: type) -> None:
    """The fields of ``section`` that list ``choices`` hold one of them (``"tasks"``: checked apart)."""
    for f in dataclasses.fields(section):
        choices = f.metadata.get("choices")
        if choices is not None and choices != "tasks" and getattr(cfg, f.name) not in choices:
            shown = " | ".join("none" if c is None else str(c) for c in choices)
            raise ConfigError(f"{flag(f.name)} {getattr(cfg, f.name)!r} is not one of {shown}")
