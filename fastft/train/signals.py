"""SIGINT/SIGTERM during training: the first one asks the loop to save a checkpoint and return after
the current step, a second one stops at once (:class:`StopNow`; the CLI exits 128 + ``signum``)."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["StopNow", "StopRequest", "stop_on_signals"]


class StopNow(KeyboardInterrupt):
    """A second SIGINT/SIGTERM: stop at once (the CLI exits 128 + ``signum``: 130 / 143)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


class StopRequest:
    """Whether (and by which signal) the run was asked to stop; the loop reads it after each step."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def request(self, signum: int = signal.SIGTERM) -> None:
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None


@contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM set ``stop`` (a second one raises :class:`StopNow`); the
    previous handlers come back on exit. Off the main thread (no handlers can be set) it does nothing."""
    old: dict[int, Any] = {}

    def handler(signum, frame):
        if stop.requested:  # second signal: stop now
            signal.signal(signum, signal.SIG_DFL)
            raise StopNow(signum)
        stop.request(signum)
        print(
            f"\n{signal.Signals(signum).name}: saving a checkpoint after this step "
            "(send it again to stop immediately)",
            file=sys.stderr,
            flush=True,
        )

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
