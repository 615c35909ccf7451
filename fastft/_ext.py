"""Loads the compiled extension ``fastft._C`` if it was built; warns once if not."""

from __future__ import annotations

import warnings
from types import ModuleType

_C: ModuleType | None = None
_error: str | None = None

try:  # the .so registers the fastft:: ops with torch.library on import
    import torch  # noqa: F401

    from fastft import _C  # type: ignore[attr-defined, no-redef]
except Exception as e:  # pragma: no cover - depends on the build
    _C = None
    _error = f"{type(e).__name__}: {e}"

_warned = False
BUILD_HINT = 'build it with: pip install --no-build-isolation -e ".[dev]"'


def available() -> bool:
    return _C is not None


def warn_missing(what: str) -> None:
    """Warn once that ``what`` runs on torch because the extension is absent."""
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            f"fastft._C is not built ({_error}); {what} falls back to torch. {BUILD_HINT}",
            RuntimeWarning,
            stacklevel=3,
        )
