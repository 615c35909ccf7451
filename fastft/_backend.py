"""Backend dispatch: which path (Triton kernel or plain torch) each op takes.

Modes:
  * ``auto`` (default): Triton kernels for CUDA tensors, the torch reference for CPU tensors.
  * ``triton``: force the Triton kernels. CPU tensors then need ``TRITON_INTERPRET=1`` set
    before triton is imported (that is how the test-suite runs every kernel on CPU).
  * ``torch``: force the reference path.

Selected by the env var ``FASTFT_BACKEND`` or, scoped, by ``with fastft.backend("triton"):``.

Every op asks :func:`use_triton` once per call. The decision is logged at DEBUG; a fallback
(CPU tensor in auto mode, triton missing, unsupported dtype/shape/head-dim) is logged once per
(op, reason) at INFO, or WARNING when the user forced ``triton``. :func:`report` returns what each
op last did, for the trainer's start-up summary.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from collections.abc import Iterator

import torch

__all__ = ["backend", "current_backend", "use_triton", "report", "triton_available", "interpreter_enabled"]

log = logging.getLogger("fastft")

BACKENDS = ("auto", "triton", "torch")
_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("fastft_backend", default=None)
_logged: set[tuple[str, str]] = set()
_report: dict[str, str] = {}


def _check(name: str) -> str:
    name = name.strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"unknown fastft backend {name!r}: use one of {', '.join(BACKENDS)}")
    return name


def current_backend() -> str:
    """The mode in force: the innermost ``fastft.backend(...)`` or else ``$FASTFT_BACKEND`` (default auto)."""
    o = _override.get()
    if o is not None:
        return o
    return _check(os.environ.get("FASTFT_BACKEND", "auto") or "auto")


@contextlib.contextmanager
def backend(name: str) -> Iterator[str]:
    """Force a path inside a ``with`` block: ``with fastft.backend("torch"): ...``."""
    token = _override.set(_check(name))
    try:
        yield name
    finally:
        _override.reset(token)


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_triton_ok: bool | None = None


def triton_available() -> bool:
    # A plain module-level cache rather than functools.lru_cache: dynamo warns on lru_cache'd calls.
    global _triton_ok
    if _triton_ok is None:
        try:
            import triton  # noqa: F401

            _triton_ok = True
        except Exception:  # pragma: no cover - depends on platform
            _triton_ok = False
    return _triton_ok


def log_once(op: str, reason: str, level: int = logging.INFO) -> None:
    """Log ``op: reason`` once per process (per distinct pair)."""
    key = (op, reason)
    if key not in _logged:
        _logged.add(key)
        log.log(level, "fastft.%s: %s", op, reason)


def use_triton(op: str, device: torch.device | torch.Tensor, unsupported: str | None = None) -> bool:
    """Decide the path for one call of ``op`` on ``device``.

    ``unsupported`` is ``None`` when the kernel can handle this call, else a short reason
    (e.g. "head dim 256 > 128"); such calls always take the torch path, with the reason logged once.
    Raises only when ``triton`` is forced on CPU tensors without the interpreter, since silently
    running torch there would hide that the kernel was never exercised.
    """
    if isinstance(device, torch.Tensor):
        device = device.device
    mode = current_backend()
    if mode == "torch":
        return _take(op, False, "torch (forced)")
    forced = mode == "triton"
    if unsupported is not None:
        return _fallback(op, f"falls back to torch: {unsupported}", forced)
    if not triton_available():
        return _fallback(op, "falls back to torch: triton is not installed", forced)
    if device.type == "cuda":
        return _take(op, True, "triton")
    if forced:
        if interpreter_enabled():
            return _take(op, True, "triton (interpreter)")
        raise RuntimeError(
            f"fastft.{op}: backend 'triton' was forced on a {device.type} tensor; "
            "set TRITON_INTERPRET=1 before importing triton, or use FASTFT_BACKEND=auto"
        )
    return _fallback(op, f"falls back to torch: {device.type} tensors use the reference path", False)


def _take(op: str, triton_path: bool, what: str) -> bool:
    _report[op] = what
    log.debug("fastft.%s -> %s", op, what)
    return triton_path


def _fallback(op: str, reason: str, forced: bool) -> bool:
    _report[op] = reason.replace("falls back to ", "")
    log_once(op, reason, logging.WARNING if forced else logging.INFO)
    return False


def report() -> dict[str, str]:
    """``{op: path}`` for every op called so far (the last decision of each)."""
    return dict(_report)
