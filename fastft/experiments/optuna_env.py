"""Optuna, loaded once for ``fastft sweep`` and its report: a missing install is one line (exit 2)
and Optuna's own chatter is turned down."""

from __future__ import annotations

import warnings

__all__ = ["load_optuna"]

_QUIETED = False


def load_optuna():
    """The ``optuna`` module; raises ``ConfigError`` naming the install when it is missing."""
    global _QUIETED
    from fastft.train.errors import ConfigError

    try:
        import optuna
    except ImportError:
        raise ConfigError("fastft sweep needs optuna: pip install fastft[sweep]") from None
    if not _QUIETED:  # once: a later call must not undo the caller's verbosity
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        _QUIETED = True
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna
